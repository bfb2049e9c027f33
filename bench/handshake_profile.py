"""Gateway CPU per WebSocket handshake, alone: the handshake part of `bench.relay` without nginx or message runs.

    python -m bench.handshake_profile [--relay native] [--rounds 5] [--duration-s 2] [--baseline DIR] [--pin]
                                      [--no-native-http] [--py-spy OUT.txt]

Starts an echo upstream, the dev Consul agent and a gateway (one worker, access log off, `lb:ws://bench-echo`
through Consul), exactly as `bench.relay` does, then runs `--rounds` rounds of handshakes (open, upgrade, close;
16 in flight) and prints the gateway's CPU microseconds per handshake for each round (from /proc, so the load
generator's own speed does not matter) and their median. CPU per handshake is the figure to compare: on a shared
machine handshakes per second moves with the neighbours' load, CPU per handshake much less.

`--baseline DIR` also starts a second gateway from another copy of the code (for example
`git archive HEAD | tar -x -C /tmp/base`, plus the built `gateway/_relay*.so`) and alternates rounds between the
two, so both see the same machine load; the last line then gives both medians and their ratio.
`--py-spy OUT` records one more round of the (working tree's) gateway with `py-spy record -r 500 -f raw` into OUT.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from bench import loadgen, procstat
from bench.relay import GATEWAY_ROUTES, pin_apart, register_echo
from harness import ManagedProcess, ProcessGroup, free_port

RELAY_THREAD = "wsgate-relay"  # the native relay thread's name (gateway/_relay.c)


async def one_round(proc: ManagedProcess, port: int, *, duration_s: float,
                    concurrency: int) -> tuple[float, float, float]:
    """(CPU microseconds per handshake, of which in the relay thread, handshakes per second) of one round."""
    before, relay_before = procstat.cpu_seconds(proc.pid), procstat.thread_cpu_seconds(proc.pid, RELAY_THREAD)
    count, elapsed = await loadgen.run_handshakes("127.0.0.1", port, "/echo/hs", concurrency=concurrency,
                                                  duration_s=duration_s)
    cpu = procstat.cpu_seconds(proc.pid) - before
    relay_cpu = procstat.thread_cpu_seconds(proc.pid, RELAY_THREAD) - relay_before
    return cpu * 1e6 / max(count, 1), relay_cpu * 1e6 / max(count, 1), count / elapsed


def start_gateway(group: ProcessGroup, name: str, workdir: Path, consul_port: int,
                  source: Path | None, relay: str, native_http: bool) -> tuple[ManagedProcess, int]:
    port = free_port()
    config = workdir / f"{name}.yaml"
    config.write_text(GATEWAY_ROUTES.format(port=port, consul_port=consul_port, native=str(relay != "python").lower(),
                                            sockmap=str(relay == "sockmap").lower(),
                                            native_http=str(native_http).lower(), accept=""))
    env: dict[str, str] = {}
    if source is not None:
        # Safe path mode: the working directory is not put first on sys.path, PYTHONPATH is.
        env = {"PYTHONSAFEPATH": "1", "PYTHONPATH": str(source)}
    proc = group.start(name, [sys.executable, "-m", "gateway", "--config", str(config), "--workers", "1"], env=env)
    proc.wait_http_ready(f"http://127.0.0.1:{port}/actuator/health")
    return proc, port


def start_py_spy(pid: int, out: Path) -> subprocess.Popen[bytes]:
    """py-spy recording `pid` at 500 Hz into `out` (raw format) until stopped with `stop_py_spy`."""
    spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or "py-spy"
    return subprocess.Popen([spy, "record", "-r", "500", "-f", "raw", "--nonblocking", "-o", str(out),
                             "--pid", str(pid)], stdout=subprocess.DEVNULL)


def stop_py_spy(recorder: subprocess.Popen[bytes]) -> None:
    recorder.send_signal(signal.SIGINT)  # py-spy writes its output and exits
    recorder.wait(timeout=30)


async def run(args: argparse.Namespace, group: ProcessGroup, workdir: Path) -> int:
    echo_port, consul_port = free_port(), free_port()
    echo = group.python("echo", "bench.echo", "--port", str(echo_port))
    echo.wait_port_ready("127.0.0.1", echo_port)
    consul = group.python("devconsul", "devconsul", "--port", str(consul_port))
    consul.wait_http_ready(f"http://127.0.0.1:{consul_port}/v1/status/leader")
    register_echo(consul_port, echo_port)
    gateways = {"current": start_gateway(group, "current", workdir, consul_port, None, args.relay,
                                            args.native_http)}
    if args.baseline is not None:
        gateways["baseline"] = start_gateway(group, "baseline", workdir, consul_port, args.baseline, args.relay,
                                                  args.native_http)
    if args.pin:  # as `bench.relay --pin` does: gateways on one CPU, everything else on the rest
        pin_apart(tuple(proc for proc, _ in gateways.values()), (echo, consul))
    for proc, port in gateways.values():  # warm-up: first connections, Consul snapshot, code paths
        await one_round(proc, port, duration_s=0.5, concurrency=args.concurrency)
    results: dict[str, list[float]] = {name: [] for name in gateways}
    order = list(gateways.items())
    for i in range(args.rounds):
        for name, (proc, port) in (order if i % 2 == 0 else order[::-1]):
            cpu_us, relay_us, rate = await one_round(proc, port, duration_s=args.duration_s,
                                                     concurrency=args.concurrency)
            results[name].append(cpu_us)
            print(f"round {i + 1} {name:8} {cpu_us:6.1f} us/handshake ({relay_us:5.1f} in the relay thread)"
                  f"  {rate:6.0f} handshakes/s", flush=True)
    if args.py_spy is not None:
        proc, port = gateways["current"]
        recorder = start_py_spy(proc.pid, args.py_spy)
        try:
            await one_round(proc, port, duration_s=args.duration_s * 2, concurrency=args.concurrency)
        finally:
            stop_py_spy(recorder)
        print(f"py-spy profile written to {args.py_spy}", flush=True)
    medians = {name: statistics.median(values) for name, values in results.items()}
    line = "  ".join(f"{name}={value:.1f}" for name, value in medians.items())
    if "baseline" in medians:
        line += f"  current/baseline={medians['current'] / medians['baseline']:.3f}"
    print(f"median gateway CPU us per handshake: {line}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--relay", choices=("sockmap", "native", "python"), default="native",
                        help="which relay carries the tunnels (as `bench.relay --relay`; the relay thread by default)")
    parser.add_argument("--rounds", type=int, default=5, help="measured rounds per gateway (median reported)")
    parser.add_argument("--duration-s", type=float, default=2.0, help="seconds per round")
    parser.add_argument("--concurrency", type=int, default=16, help="handshakes in flight")
    parser.add_argument("--baseline", type=Path, help="another copy of the code to run alongside, alternating")
    parser.add_argument("--pin", action="store_true", help="gateways on the last CPU, the rest elsewhere")
    parser.add_argument("--native-http", action=argparse.BooleanOptionalAction, default=True,
                        help="the gateway with wsgate.native-http on, its default (--no-native-http: the Python "
                             "HTTP path)")
    parser.add_argument("--py-spy", type=Path, help="record one more round with py-spy (raw format) here")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("--rounds must be >= 1")
    if args.baseline is not None and not (args.baseline / "gateway" / "__init__.py").exists():
        parser.error(f"--baseline {args.baseline} holds no gateway package")
    workdir = Path(tempfile.mkdtemp(prefix="wsgate-hs-"))
    group = ProcessGroup(workdir / "logs")
    try:
        import uvloop

        return uvloop.run(run(args, group, workdir))
    except BaseException:
        print(group.logs(), file=sys.stderr)
        raise
    finally:
        group.stop_all()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
