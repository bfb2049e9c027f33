"""Relay benchmark: the gateway against nginx in front of the same upstream, in one run.

    python -m bench.relay [--quick] [--repeat 3] [--pin] [--relay sockmap|native|python] [--no-native-http]
                          [--handshakes-only] [--defer-accept SECONDS] [--nginx-deferred]
                          [--json bench/out/relay.json]

Starts an echo upstream, the dev Consul agent (the gateway resolves `lb:ws://bench-echo` through it), nginx (Debian's
package, one worker, tuned buffers) and the gateway (one worker). For 100 B, 4 KiB and 16 KiB messages it measures the
relay's CPU microseconds per relayed message (CPU of the relay's whole process tree over the run, divided by the
messages it carried in both directions), round trips per second and p50/p99 latency; then handshakes per second
through each (with the relay's CPU microseconds per handshake, which the load generator cannot cap), and RSS per
idle tunnel with idle connections open. `--repeat N` runs every measurement N times, alternating the relays, and
reports medians. `--pin` gives the relays (gateway, nginx) the last CPU and the load generator, echo node and
Consul agent the others, the same for both relays. The last line is `relay_cpu_ratio_max=<worst gateway/nginx CPU
ratio over the sizes>`. `--relay` picks the gateway's tunnel relay: `sockmap` (the default here: the kernel moves the
bytes where it allows it), `native` (`wsgate.sockmap-relay: false`, the relay thread) or `python`
(`wsgate.native-relay: false`). The gateway's native HTTP lane is on, as by default, and takes upgrades it can route
straight to the relay thread's dial; `--no-native-http` turns it off (the Python HTTP path).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

from bench import loadgen, procstat
from gateway.config.settings_table import default
from harness import ManagedProcess, ProcessGroup, free_port

DEFER_ACCEPT_DEFAULT_S: float = default("defer_accept_s")  # the settings table's, said once

SIZES = (100, 4096, 16384)

NGINX_CONF = """
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 16384; multi_accept on; }}
worker_rlimit_nofile 20000;
http {{
  access_log off;
  upstream echo {{ server 127.0.0.1:{upstream_port}; keepalive 64; }}
  map $http_upgrade $connection_upgrade {{ default upgrade; '' close; }}
  server {{
    listen 127.0.0.1:{port} backlog=4096{deferred};
    location / {{
      proxy_pass http://echo;
      proxy_http_version 1.1;
      proxy_set_header Upgrade $http_upgrade;
      proxy_set_header Connection $connection_upgrade;
      proxy_set_header Host $host;
      proxy_buffer_size 64k;
      proxy_buffers 8 64k;
      proxy_read_timeout 3600s;
      proxy_send_timeout 3600s;
    }}
  }}
}}
"""

GATEWAY_ROUTES = """
server:
  host: 127.0.0.1
  port: {port}
wsgate:
  access-log: false
  workers: 1
  native-relay: {native}
  sockmap-relay: {sockmap}
  native-http: {native_http}
{accept}discovery:
  consul:
    address: 127.0.0.1:{consul_port}
routes:
  - id: bench-echo
    uri: lb:ws://bench-echo
    predicates:
      - Path=/echo/**
"""


def find_nginx() -> str:
    """nginx's path, installing Debian's package when it is missing."""
    path = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
    if path:
        return path
    print("installing nginx (Debian package)...", file=sys.stderr, flush=True)
    subprocess.run(["apt-get", "install", "-y", "-q", "--no-install-recommends", "nginx-light"], check=False,
                   stdout=subprocess.DEVNULL)
    path = shutil.which("nginx") or "/usr/sbin/nginx"
    if not Path(path).exists():
        raise SystemExit("nginx is not installed and could not be installed")
    return path


def register_echo(consul_port: int, echo_port: int) -> None:
    body = json.dumps({"ID": "bench-echo-1", "Name": "bench-echo", "Address": "127.0.0.1", "Port": echo_port,
                       "Check": {"HTTP": f"http://127.0.0.1:{echo_port}/health", "Interval": "10s"}}).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{consul_port}/v1/agent/service/register", data=body,
                                 method="PUT")
    with urllib.request.urlopen(req, timeout=5):
        pass


async def measure_size(name: str, proc: ManagedProcess, port: int, size: int, *, duration_s: float,
                       connections: int) -> dict[str, float | str]:
    before = procstat.cpu_seconds(proc.pid)
    kthreads, machine = procstat.kernel_threads_cpu_seconds(), procstat.machine_busy_seconds()
    rt = await loadgen.run_round_trips("127.0.0.1", port, "/echo/x", size_bytes=size, connections=connections,
                                       duration_s=duration_s)
    cpu = procstat.cpu_seconds(proc.pid) - before
    kthreads = procstat.kernel_threads_cpu_seconds() - kthreads
    machine = procstat.machine_busy_seconds() - machine
    messages = 2 * rt.count
    # The relay's own CPU misses work the kernel does for it elsewhere (the sockmap relay's sends run in kernel
    # worker threads, its verdicts in the senders' softirqs): the kernel threads' and the whole machine's CPU per
    # message (load generator and echo included, the same for both relays) show whether CPU moved rather than went.
    return {"relay": name, "size": size, "round_trips": rt.count, "rtt_per_s": rt.count / rt.elapsed_s,
            "cpu_s": cpu, "cpu_us_per_msg": cpu * 1e6 / max(messages, 1),
            "kthread_us_per_msg": kthreads * 1e6 / max(messages, 1),
            "machine_us_per_msg": machine * 1e6 / max(messages, 1),
            "p50_ms": rt.percentile_ms(0.5), "p99_ms": rt.percentile_ms(0.99)}


def median_row(rows: list[dict[str, float | str]]) -> dict[str, float | str]:
    """Per-field medians of repeated measurements of one relay and size."""
    out: dict[str, float | str] = dict(rows[0])
    for key, value in rows[0].items():
        if not isinstance(value, str):
            out[key] = statistics.median(float(r[key]) for r in rows)
    out["runs"] = len(rows)
    return out


async def measure_handshakes(proc: ManagedProcess, port: int, *, duration_s: float) -> tuple[float, float]:
    """(handshakes per second, relay CPU microseconds per handshake)."""
    before = procstat.cpu_seconds(proc.pid)
    count, elapsed = await loadgen.run_handshakes("127.0.0.1", port, "/echo/hs", concurrency=16,
                                                  duration_s=duration_s)
    cpu = procstat.cpu_seconds(proc.pid) - before
    return count / elapsed, cpu * 1e6 / max(count, 1)


def pin(pid: int, cpus: set[int]) -> None:
    """Pin `pid` and its descendants (threads included) to `cpus`."""
    for p in procstat.descendants(pid):
        for task in Path(f"/proc/{p}/task").glob("*"):
            try:
                os.sched_setaffinity(int(task.name), cpus)
            except OSError:
                continue


def pin_apart(servers: tuple[ManagedProcess, ...], others: tuple[ManagedProcess, ...]) -> tuple[int, list[int]] | None:
    """`--pin`: the servers measured on the last CPU, the rest (and this process, and what it starts from now on,
    such as wrk) on the others. (server CPU, other CPUs), or None with fewer than two CPUs (nothing pinned)."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return None
    for proc in servers:
        pin(proc.pid, {cpus[-1]})
    for proc in others:
        pin(proc.pid, set(cpus[:-1]))
    os.sched_setaffinity(0, set(cpus[:-1]))
    return cpus[-1], cpus[:-1]


async def measure_idle(proc: ManagedProcess, port: int, count: int) -> float:
    before = procstat.rss_bytes(proc.pid)
    clients = await loadgen.open_idle("127.0.0.1", port, "/echo/idle", count=count)
    after = procstat.rss_bytes(proc.pid)
    await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)
    return (after - before) / count


async def run(args: argparse.Namespace, group: ProcessGroup, workdir: Path) -> dict[str, object]:
    duration_s = 2.0 if args.quick else 5.0
    idle_count = 500 if args.quick else 2000
    echo_port, consul_port, nginx_port, gw_port = free_port(), free_port(), free_port(), free_port()
    echo = group.python("echo", "bench.echo", "--port", str(echo_port))
    echo.wait_port_ready("127.0.0.1", echo_port)
    consul = group.python("devconsul", "devconsul", "--port", str(consul_port))
    consul.wait_http_ready(f"http://127.0.0.1:{consul_port}/v1/status/leader")
    register_echo(consul_port, echo_port)

    (workdir / "nginx.conf").write_text(nginx_conf(args, prefix=workdir, port=nginx_port, upstream_port=echo_port))
    nginx = group.start("nginx", [find_nginx(), "-p", str(workdir), "-c", str(workdir / "nginx.conf"),
                                  "-g", "daemon off;"])
    nginx.wait_port_ready("127.0.0.1", nginx_port)
    (workdir / "routes.yaml").write_text(GATEWAY_ROUTES.format(
        port=gw_port, consul_port=consul_port, native=str(args.relay != "python").lower(),
        sockmap=str(args.relay == "sockmap").lower(), native_http=str(args.native_http).lower(),
        accept=accept_line(args)))
    gateway = group.python("gateway", "gateway", "--config", str(workdir / "routes.yaml"), "--workers", "1")
    gateway.wait_http_ready(f"http://127.0.0.1:{gw_port}/actuator/health")
    relays = {"gateway": (gateway, gw_port), "nginx": (nginx, nginx_port)}
    pinned = pin_apart((gateway, nginx), (echo, consul)) if args.pin else None
    if pinned is not None:
        print(f"pinned: relays on CPU [{pinned[0]}], load generator/echo/consul on {pinned[1]}", flush=True)
    order = list(relays.items())

    rows: list[dict[str, float | str]] = []
    sizes = () if args.handshakes_only else SIZES
    for size in sizes:
        runs: dict[str, list[dict[str, float | str]]] = {name: [] for name in relays}
        for i in range(args.repeat):
            # Alternate which relay goes first so drift in machine load does not always hit the same one.
            for name, (proc, port) in (order if i % 2 == 0 else order[::-1]):
                runs[name].append(await measure_size(name, proc, port, size, duration_s=duration_s,
                                                     connections=args.connections))
        for name in relays:
            row = median_row(runs[name])
            rows.append(row)
            print(f"{name:8} {size:6} B  {float(row['cpu_us_per_msg']):7.2f} us/msg  "
                  f"{float(row['rtt_per_s']):9.0f} rt/s  p50 {float(row['p50_ms']):.3f} ms  "
                  f"p99 {float(row['p99_ms']):.3f} ms  kernel threads {float(row['kthread_us_per_msg']):.2f} "
                  f"us/msg  machine {float(row['machine_us_per_msg']):.2f} us/msg", flush=True)
    hs_runs: dict[str, list[tuple[float, float]]] = {name: [] for name in relays}
    for i in range(args.repeat):
        for name, (proc, port) in (order if i % 2 == 0 else order[::-1]):
            hs_runs[name].append(await measure_handshakes(proc, port, duration_s=duration_s))
    handshakes: dict[str, float] = {}
    handshake_cpu: dict[str, float] = {}
    for name in relays:
        handshakes[name] = statistics.median(r for r, _ in hs_runs[name])
        handshake_cpu[name] = statistics.median(c for _, c in hs_runs[name])
        print(f"{name:8} handshakes/s {handshakes[name]:.0f}  relay CPU {handshake_cpu[name]:.0f} us/handshake",
              flush=True)
    idle: dict[str, float] = {}
    for name, (proc, port) in () if args.handshakes_only else relays.items():
        idle[name] = await measure_idle(proc, port, idle_count)
        print(f"{name:8} RSS per idle tunnel {idle[name] / 1024:.1f} KiB ({idle_count} idle)", flush=True)

    ratios, with_kthreads = {}, {}
    for size in sizes:
        ours = next(r for r in rows if r["relay"] == "gateway" and r["size"] == size)
        theirs = next(r for r in rows if r["relay"] == "nginx" and r["size"] == size)
        ratios[size] = float(ours["cpu_us_per_msg"]) / float(theirs["cpu_us_per_msg"])
        with_kthreads[size] = ((float(ours["cpu_us_per_msg"]) + float(ours["kthread_us_per_msg"]))
                               / (float(theirs["cpu_us_per_msg"]) + float(theirs["kthread_us_per_msg"])))
    return {"rows": rows, "handshakes_per_s": handshakes, "handshake_cpu_us": handshake_cpu,
            "idle_rss_bytes_per_tunnel": idle, "cpu_ratio": ratios, "cpu_ratio_with_kernel_threads": with_kthreads,
            "idle_connections": idle_count,
            "duration_s": duration_s, "connections": args.connections, "repeat": args.repeat, "pinned": args.pin,
            "gateway_defer_accept_s": args.defer_accept, "nginx_deferred": args.nginx_deferred}


def add_accept_options(parser: argparse.ArgumentParser) -> None:
    """How each relay's listener takes new connections (`bench.relay`, `bench.handshake_syscalls`)."""
    parser.add_argument("--defer-accept", type=float, default=DEFER_ACCEPT_DEFAULT_S,
                        help="the gateway's wsgate.defer-accept in seconds (default: the setting's; 0: off)")
    parser.add_argument("--nginx-deferred", action="store_true",
                        help="nginx listens with `deferred` (TCP_DEFER_ACCEPT), as the gateway does by default")


def nginx_conf(args: argparse.Namespace | None, **fields: object) -> str:
    """The bench's nginx.conf, with `deferred` on its listener when asked."""
    return NGINX_CONF.format(deferred=" deferred" if args is not None and args.nginx_deferred else "", **fields)


def accept_line(args: argparse.Namespace | None) -> str:
    """GATEWAY_ROUTES's `{accept}`: the gateway's `wsgate.defer-accept` when not its default (none: a copy of the code
    from before the key, as `bench.handshake_profile --baseline` runs, still reads the file)."""
    if args is None or args.defer_accept == DEFER_ACCEPT_DEFAULT_S:
        return ""
    return f"  defer-accept: {args.defer_accept}\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="short runs (development)")
    parser.add_argument("--connections", type=int, default=32, help="concurrent echo connections per run")
    parser.add_argument("--repeat", type=int, default=1, help="runs per measurement; medians are reported")
    parser.add_argument("--pin", action="store_true",
                        help="pin the relays to the last CPU and everything else to the others")
    parser.add_argument("--relay", choices=("sockmap", "native", "python"), default="sockmap",
                        help="the gateway's tunnel relay (default: sockmap, which the gateway runs only when asked)")
    parser.add_argument("--native-http", action=argparse.BooleanOptionalAction, default=True,
                        help="the gateway with wsgate.native-http on, its default (--no-native-http: the Python "
                             "HTTP path)")
    parser.add_argument("--json", type=Path, help="also write the figures as JSON here")
    parser.add_argument("--handshakes-only", action="store_true",
                        help="only the handshake runs (no message sizes, no idle tunnels): more repeats per minute")
    add_accept_options(parser)
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error("--repeat must be >= 1")
    workdir = Path(tempfile.mkdtemp(prefix="wsgate-relay-"))
    group = ProcessGroup(workdir / "logs")
    try:
        import uvloop

        result = uvloop.run(run(args, group, workdir))
    except BaseException:
        print(group.logs(), file=sys.stderr)
        raise
    finally:
        group.stop_all()
    ratios = result["cpu_ratio"]
    assert isinstance(ratios, dict)
    hs = result["handshakes_per_s"]
    idle = result["idle_rss_bytes_per_tunnel"]
    assert isinstance(hs, dict) and isinstance(idle, dict)
    for size, ratio in ratios.items():
        print(f"cpu_ratio[{size}B]={ratio:.2f}")
    with_kthreads = result["cpu_ratio_with_kernel_threads"]
    assert isinstance(with_kthreads, dict)
    for size, ratio in with_kthreads.items():  # the relay's CPU plus the kernel threads' (which work for it)
        print(f"cpu_ratio_with_kernel_threads[{size}B]={ratio:.2f}")
    print(f"handshake_ratio={hs['gateway'] / hs['nginx']:.2f}")
    hs_cpu = result["handshake_cpu_us"]
    assert isinstance(hs_cpu, dict)
    # Capacity per relay core: nginx's CPU per handshake over ours (1.0 = as many handshakes per core).
    print(f"handshake_cpu_capacity_ratio={hs_cpu['nginx'] / max(hs_cpu['gateway'], 1e-9):.2f}")
    if idle:
        print(f"idle_memory_ratio={idle['gateway'] / max(idle['nginx'], 1):.2f}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2, default=str))
    if ratios:
        print(f"relay_cpu_ratio_max={max(ratios.values()):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
