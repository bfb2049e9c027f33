"""Instructions per WebSocket handshake and per proxied HTTP request, counted by `valgrind --tool=callgrind`.

    python -m bench.callgrind [--handshakes 200] [--requests 1000] [--no-native-http] [--unique] [--json OUT]
                              [--keep DIR]

CPU seconds on a shared machine move with the neighbours' load; instruction counts do not (the same binary, inputs
and environment give the same count), so this is the figure to compare before and after a change.

The gateway (one worker, access log off) runs under callgrind with collection off. After a warm-up (the same
traffic, uncounted, so caches, pools and lazy imports are settled), counting is switched on with `callgrind_control`
around each phase:
- `handshake`: open, upgrade (route `lb:ws://bench-echo` through the dev Consul agent, as `bench.relay` does),
  close; 16 in flight;
- `http`: keep-alive GETs on `Path=/api/**` with `StripPrefix=1` to a fast upstream (an nginx answering from
  memory), 8 connections; with `--unique`, every request's path its own (`/api/item/<n>`);
- `filters`: the same GETs on `Path=/fapi/**` with `bench.http`'s chain `filters` (StripPrefix, AddRequestHeader,
  RequestRateLimiter on a Redis of the run's own, keyed on the client address; nginx: `limit_req` and
  `proxy_set_header`); `--unique` here too;
and the phase's instructions (every thread of the process: the relay thread too) divided by its count is printed.
nginx (one process, `master_process off`) is counted the same way behind the same upstreams, for scale. The last
line is `instructions_per_handshake=<gateway> instructions_per_request=<gateway> instructions_per_filtered=<gateway>`.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path

from bench import loadgen
from bench.http import FILTERS_ROUTE, UPSTREAM_CONF
from bench.relay import find_nginx, nginx_conf, register_echo
from harness import ManagedProcess, ProcessGroup, free_port, redis_server_binary

GATEWAY_ROUTES = """
server:
  host: 127.0.0.1
  port: {port}
wsgate:
  access-log: false
  workers: 1
  native-http: {native_http}
  redis: {{url: "redis://127.0.0.1:{redis_port}/0", prefix: "bench-callgrind:"}}
discovery:
  consul:
    address: 127.0.0.1:{consul_port}
routes:
  - id: bench-echo
    uri: lb:ws://bench-echo
    predicates:
      - Path=/echo/**
  - id: api
    uri: http://127.0.0.1:{upstream_port}
    predicates:
      - Path=/api/**
    filters:
      - StripPrefix=1
""" + FILTERS_ROUTE

# nginx's relay configuration from bench.relay, plus the same /api/ location as bench.http's proxy.
NGINX_API = """
    location /api/ {
      proxy_pass http://api/;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }
    location /fapi/ {
      limit_req zone=bench burst=1000000 nodelay;
      proxy_pass http://api/;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header X-Bench yes;
    }
"""


async def http_requests(port: int, count: int, connections: int = 8, *, unique: bool = False,
                        prefix: bytes = b"/api") -> None:
    """`count` keep-alive GETs of /api/item over `connections` connections; every answer must be a 200. With
    `unique`, every request has a path of its own (`/api/item/<n>`), as `bench.http`'s chain `unique`; `prefix`
    replaces `/api` (`/fapi`: the route with filters)."""
    serial = itertools.count()

    async def one(n: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        request = b"GET %s/item HTTP/1.1\r\nHost: bench\r\n\r\n" % prefix
        try:
            for _ in range(n):
                if unique:
                    request = b"GET %s/item/%d HTTP/1.1\r\nHost: bench\r\n\r\n" % (prefix, next(serial))
                writer.write(request)
                head = await reader.readuntil(b"\r\n\r\n")
                if not head.startswith(b"HTTP/1.1 200"):
                    raise RuntimeError(f"unexpected answer: {head[:60]!r}")
                length = re.search(rb"(?i)\r\ncontent-length:\s*(\d+)", head)
                await reader.readexactly(int(length.group(1)) if length else 0)
        finally:
            writer.close()

    share, extra = divmod(count, connections)
    await asyncio.gather(*(one(share + (1 if i < extra else 0)) for i in range(connections)))


def control(pid: int, *args: str) -> None:
    subprocess.run(["callgrind_control", *args, str(pid)], check=True, capture_output=True, timeout=120)


def dump_instructions(pid: int, out: Path, before: set[Path]) -> int:
    """Dump callgrind's counters now and return the instructions of the new dump (all threads)."""
    control(pid, "--dump")
    new = sorted(set(out.parent.glob(out.name + "*")) - before)
    total = 0
    for path in new:
        # The header's `summary:` is written at dump time as 0 here; `totals:` at the end holds the count.
        match = re.search(r"^totals:\s*(\d+)", path.read_text(errors="replace"), re.M)
        if match:
            total += int(match.group(1))
        before.add(path)
    return total


async def phase(proc: ManagedProcess, out: Path, seen: set[Path], work: Callable[[], Awaitable[None]]) -> int:
    """Instructions `proc` spends while `work` (a coroutine factory) runs."""
    control(proc.pid, "--zero")
    control(proc.pid, "--instr=on")
    await work()
    control(proc.pid, "--instr=off")
    return dump_instructions(proc.pid, out, seen)


def start_under_callgrind(group: ProcessGroup, name: str, argv: list[str], out: Path) -> ManagedProcess:
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        raise SystemExit("valgrind is not installed (Debian package valgrind)")
    return group.start(name, [valgrind, "--tool=callgrind", "--instr-atstart=no",
                              "--separate-threads=no", f"--callgrind-out-file={out}", *argv])


async def measure(proc: ManagedProcess, port: int, out: Path, args: argparse.Namespace) -> dict[str, float]:
    seen: set[Path] = set()

    async def handshakes(n: int) -> None:
        done, _ = await loadgen.run_handshakes("127.0.0.1", port, "/echo/hs", concurrency=16, duration_s=600,
                                               max_handshakes=n)
        if done < n:
            raise RuntimeError(f"only {done} of {n} handshakes")

    await handshakes(args.handshakes // 4)  # warm-up, uncounted
    await http_requests(port, args.requests // 4, unique=args.unique)
    hs = await phase(proc, out, seen, lambda: handshakes(args.handshakes))
    req = await phase(proc, out, seen, lambda: http_requests(port, args.requests, unique=args.unique))
    await http_requests(port, args.requests // 4, unique=args.unique, prefix=b"/fapi")  # warm-up: Redis, the script
    filtered = await phase(proc, out, seen, lambda: http_requests(port, args.requests, unique=args.unique,
                                                                  prefix=b"/fapi"))
    return {"instructions_per_handshake": hs / args.handshakes, "instructions_per_request": req / args.requests,
            "instructions_per_filtered": filtered / args.requests}


async def run(args: argparse.Namespace, group: ProcessGroup, workdir: Path) -> dict[str, dict[str, float]]:
    nginx = find_nginx()
    echo_port, consul_port, upstream_port, gw_port, nginx_port, redis_port = (free_port() for _ in range(6))
    redis = group.start("redis", [redis_server_binary(), "--bind", "127.0.0.1", "--port", str(redis_port),
                                  "--save", "", "--appendonly", "no", "--dir", str(workdir)])
    redis.wait_port_ready("127.0.0.1", redis_port)
    echo = group.python("echo", "bench.echo", "--port", str(echo_port))
    echo.wait_port_ready("127.0.0.1", echo_port)
    consul = group.python("devconsul", "devconsul", "--port", str(consul_port))
    consul.wait_http_ready(f"http://127.0.0.1:{consul_port}/v1/status/leader")
    register_echo(consul_port, echo_port)
    (workdir / "upstream.conf").write_text(UPSTREAM_CONF.format(prefix=workdir, port=upstream_port))
    upstream = group.start("upstream", [nginx, "-p", str(workdir), "-c", str(workdir / "upstream.conf"),
                                        "-g", "daemon off;"])
    upstream.wait_port_ready("127.0.0.1", upstream_port)

    (workdir / "routes.yaml").write_text(GATEWAY_ROUTES.format(
        port=gw_port, native_http=str(args.native_http).lower(), consul_port=consul_port,
        upstream_port=upstream_port, redis_port=redis_port))
    gw_out = workdir / "callgrind.gateway.out"
    gateway = start_under_callgrind(group, "gateway", [sys.executable, "-m", "gateway", "--config",
                                                       str(workdir / "routes.yaml"), "--workers", "1"], gw_out)
    gateway.wait_http_ready(f"http://127.0.0.1:{gw_port}/actuator/health", timeout_s=300)

    conf = nginx_conf(None, prefix=workdir, port=nginx_port, upstream_port=echo_port)
    conf = conf.replace("  server {", f"  upstream api {{ server 127.0.0.1:{upstream_port}; keepalive 64; }}\n"
                                      "  limit_req_zone $binary_remote_addr zone=bench:1m rate=1000000r/s;\n"
                                      "  server {", 1)
    conf = conf.replace("    location / {", NGINX_API + "    location / {", 1)
    (workdir / "nginx.conf").write_text(conf)
    ng_out = workdir / "callgrind.nginx.out"
    proxy = start_under_callgrind(group, "nginx", [nginx, "-p", str(workdir), "-c", str(workdir / "nginx.conf"),
                                                   "-g", "daemon off; master_process off;"], ng_out)
    proxy.wait_port_ready("127.0.0.1", nginx_port, timeout_s=120)

    results = {"gateway": await measure(gateway, gw_port, gw_out, args),
               "nginx": await measure(proxy, nginx_port, ng_out, args)}
    for name, row in results.items():
        print(f"{name:8} {row['instructions_per_handshake']:12,.0f} instructions/handshake  "
              f"{row['instructions_per_request']:12,.0f} instructions/request  "
              f"{row['instructions_per_filtered']:12,.0f} instructions/filtered request", flush=True)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--handshakes", type=int, default=200)
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--native-http", action=argparse.BooleanOptionalAction, default=True,
                        help="the gateway with wsgate.native-http on, its default (--no-native-http: the Python "
                             "HTTP path)")
    parser.add_argument("--unique", action="store_true",
                        help="every HTTP request with a path of its own (what the lane's decision cache cannot serve)")
    parser.add_argument("--keep", type=Path, default=None,
                        help="run in this folder and keep it: the callgrind dumps, for callgrind_annotate")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-callgrind-") as tmp:
        workdir = Path(tmp) if args.keep is None else args.keep
        workdir.mkdir(parents=True, exist_ok=True)
        group = ProcessGroup(workdir)
        try:
            result = asyncio.run(run(args, group, workdir))
        finally:
            group.stop_all()
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))
    gw = result["gateway"]
    print(f"instructions_per_handshake={gw['instructions_per_handshake']:.0f} "
          f"instructions_per_request={gw['instructions_per_request']:.0f} "
          f"instructions_per_filtered={gw['instructions_per_filtered']:.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
