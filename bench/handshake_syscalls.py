"""System calls and context switches per WebSocket upgrade, the gateway against nginx (issue 20, goal 2).

    python -m bench.handshake_syscalls [--handshakes 2000] [--relay sockmap|native] [--pin] [--perf OUT_DIR]

Starts the `bench.relay` setup (echo upstream, dev Consul, nginx with one worker, the gateway with one worker and
the native HTTP lane on), warms both up, then for each relay runs a fixed number of handshakes (open, upgrade,
close; 16 in flight) three times: once under `strace -f` (system calls by kind and by thread, divided by the
handshakes), once bare, reading every thread's voluntary and involuntary context switches from /proc (strace's
stops would add their own), and, with `--perf`, once under `perf record -g` (kernel symbols by self time, written
to OUT_DIR/<relay>.txt). CPU time under strace means nothing; the counts do not depend on it. `--pin` pins as
`bench.relay --pin` does (the relays on the last CPU, the rest elsewhere): the gateway's two threads then share
one CPU, and their switches show as they do in that bench.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import loadgen, procstat
from bench.relay import (
    GATEWAY_ROUTES,
    accept_line,
    add_accept_options,
    find_nginx,
    nginx_conf,
    pin_apart,
    register_echo,
)
from harness import ProcessGroup, free_port

_CALL = re.compile(r"^(\d+)\s+(?:<\.\.\. )?(\w+)[( ]")


def threads(pid: int) -> dict[int, str]:
    """Every thread of `pid` and its descendants, by id, with its name."""
    found = {}
    for p in procstat.descendants(pid):
        for task in Path(f"/proc/{p}/task").glob("*"):
            try:
                found[int(task.name)] = (task / "comm").read_text().strip()
            except OSError:
                continue
    return found


def switches(tids: dict[int, str]) -> dict[str, tuple[int, int]]:
    """(voluntary, involuntary) context switches so far, per thread name."""
    out: dict[str, tuple[int, int]] = {}
    for tid, name in tids.items():
        fields = dict(line.split(":", 1) for line in Path(f"/proc/{tid}/status").read_text().splitlines()
                      if ":" in line)
        v, n = int(fields["voluntary_ctxt_switches"]), int(fields["nonvoluntary_ctxt_switches"])
        pv, pn = out.get(name, (0, 0))
        out[name] = (pv + v, pn + n)
    return out


async def handshakes(port: int, count: int) -> int:
    done, _ = await loadgen.run_handshakes("127.0.0.1", port, "/echo/hs", concurrency=16, duration_s=600,
                                           max_handshakes=count)
    return done


def traced(pid: int, port: int, count: int, out: Path) -> tuple[int, dict[tuple[str, str], int]]:
    tids = threads(pid)
    argv = ["strace", "-f", "-qq", "-o", str(out)] + [a for t in tids for a in ("-p", str(t))]
    tracer = subprocess.Popen(argv, stderr=subprocess.DEVNULL)
    time.sleep(1.0)  # strace has no readiness signal; a benchmark, not a test
    done = asyncio.run(handshakes(port, count))
    tracer.send_signal(signal.SIGINT)
    tracer.wait(timeout=60)
    calls: dict[tuple[str, str], int] = collections.Counter()
    for line in out.read_text().splitlines():
        m = _CALL.match(line)
        if m is None or "resumed>" in line:
            continue
        calls[(tids.get(int(m.group(1)), "?"), m.group(2))] += 1
    return done, calls


def perf_kernel(pid: int, port: int, count: int, out: Path) -> str:
    data = out.with_suffix(".data")
    pids = ",".join(str(p) for p in procstat.descendants(pid))
    rec = subprocess.Popen(["perf", "record", "-q", "-g", "-o", str(data), "-p", pids],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.0)
    asyncio.run(handshakes(port, count))
    rec.send_signal(signal.SIGINT)
    rec.wait(timeout=60)
    report = subprocess.run(["perf", "report", "-i", str(data), "--no-children", "--sort", "sym", "--stdio",
                             "-g", "none", "--percent-limit", "0.7"], capture_output=True, text=True).stdout
    out.write_text(report)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--handshakes", type=int, default=2000)
    parser.add_argument("--relay", choices=("sockmap", "native"), default="sockmap")
    parser.add_argument("--perf", type=Path, default=None,
                        help="also record kernel profiles (perf record -g) and keep the strace logs in this folder")
    parser.add_argument("--pin", action="store_true", help="the relays on the last CPU, the rest elsewhere")
    add_accept_options(parser)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="wsgate-hs-sys-") as tmp:
        workdir = Path(tmp)
        group = ProcessGroup(workdir)
        try:
            echo_port, consul_port, nginx_port, gw_port = free_port(), free_port(), free_port(), free_port()
            echo = group.python("echo", "bench.echo", "--port", str(echo_port))
            echo.wait_port_ready("127.0.0.1", echo_port)
            consul = group.python("devconsul", "devconsul", "--port", str(consul_port))
            consul.wait_http_ready(f"http://127.0.0.1:{consul_port}/v1/status/leader")
            register_echo(consul_port, echo_port)
            (workdir / "nginx.conf").write_text(nginx_conf(args, prefix=workdir, port=nginx_port,
                                                           upstream_port=echo_port))
            nginx = group.start("nginx", [find_nginx(), "-p", str(workdir), "-c", str(workdir / "nginx.conf"),
                                          "-g", "daemon off;"])
            nginx.wait_port_ready("127.0.0.1", nginx_port)
            (workdir / "routes.yaml").write_text(GATEWAY_ROUTES.format(
                port=gw_port, consul_port=consul_port, native="true", sockmap=str(args.relay == "sockmap").lower(),
                native_http="true", accept=accept_line(args)))
            gateway = group.python("gateway", "gateway", "--config", str(workdir / "routes.yaml"), "--workers", "1")
            gateway.wait_http_ready(f"http://127.0.0.1:{gw_port}/actuator/health")
            if args.pin:
                pin_apart((gateway, nginx), (echo, consul))
            for name, proc, port in (("gateway", gateway, gw_port), ("nginx", nginx, nginx_port)):
                asyncio.run(handshakes(port, 500))  # warm up: caches, first dials, the lane's decisions
                tids = threads(proc.pid)
                before = switches(tids)
                done = asyncio.run(handshakes(port, args.handshakes))
                after = switches(tids)
                print(f"== {name}: context switches per handshake ({done} handshakes, no tracer)")
                for thread in sorted(after):
                    v = (after[thread][0] - before.get(thread, (0, 0))[0]) / done
                    n = (after[thread][1] - before.get(thread, (0, 0))[1]) / done
                    print(f"   {thread:16} voluntary {v:6.2f}  involuntary {n:6.2f}")
                done, calls = traced(proc.pid, port, args.handshakes, workdir / f"{name}.strace")
                total = sum(calls.values())
                print(f"== {name}: system calls per handshake ({done} handshakes): {total / done:.2f}")
                for (thread, call), n in sorted(calls.items(), key=lambda kv: -kv[1]):
                    if n / done >= 0.05:
                        print(f"   {thread:16} {call:18} {n / done:6.2f}")
                if args.perf is not None:
                    args.perf.mkdir(parents=True, exist_ok=True)
                    (workdir / f"{name}.strace").rename(args.perf / f"{name}.strace")
                    perf_kernel(proc.pid, port, args.handshakes * 3, args.perf / f"{name}.txt")
                    print(f"== {name}: perf report in {args.perf / (name + '.txt')}")
                sys.stdout.flush()
        finally:
            group.stop_all()
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
