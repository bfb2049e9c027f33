"""Plain HTTP proxying: the gateway against nginx, in one run, with wrk as the load.

    python -m bench.http [--quick] [--repeat 3] [--pin] [--connections 32] [--no-native-http] [--json OUT]

Both proxies forward `/api/**` to the same fast upstream (a second nginx answering `200 ok` from memory, so the
upstream is never the bottleneck) and strip the first path segment, as SCG's `Path=/api/**` with `StripPrefix=1`
does. Three chains are measured:
- `plain`: StripPrefix only, the same request each time;
- `unique`: the same route, every request with a path of its own (`/api/item/<n>`, a wrk script): what a
  decision cache keyed on the request head (the native lane's, `wsgate.native-http`) cannot serve;
- `filters`: StripPrefix, AddRequestHeader and RequestRateLimiter (Redis token bucket, keyed on the client address,
  with a rate no request reaches); nginx gets the same header and a `limit_req` zone no request reaches.

The gateway runs one worker, nginx one worker process, each with keep-alive to the upstream. wrk (Debian's package,
installed when missing) runs one thread and `--connections` connections for the duration. CPU per request is the
proxy's user + system CPU (from /proc, its whole process tree) over the requests wrk completed. `--pin` puts both
proxies on the last CPU and wrk, the upstream and Redis on the others. Every figure is the median of `--repeat`
runs, the proxies alternating which goes first. The last line is `http_cpu_ratio=<gateway/nginx CPU per request,
plain chain>`.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from bench import procstat
from bench.relay import find_nginx, pin_apart
from harness import ManagedProcess, ProcessGroup, free_port, redis_server_binary

UPSTREAM_CONF = """
worker_processes 1;
pid {prefix}/upstream.pid;
error_log {prefix}/upstream-error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  keepalive_requests 1000000;
  server {{
    listen 127.0.0.1:{port} backlog=4096;
    location / {{ default_type text/plain; return 200 "ok\\n"; }}
  }}
}}
"""

PROXY_CONF = """
worker_processes 1;
pid {prefix}/proxy.pid;
error_log {prefix}/proxy-error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  keepalive_requests 1000000;
  limit_req_zone $binary_remote_addr zone=bench:1m rate=1000000r/s;
  upstream up {{ server 127.0.0.1:{upstream_port}; keepalive 64; }}
  server {{
    listen 127.0.0.1:{port} backlog=4096;
    location /api/ {{
      proxy_pass http://up/;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }}
  }}
  server {{
    listen 127.0.0.1:{filters_port} backlog=4096;
    location /api/ {{
      limit_req zone=bench burst=1000000 nodelay;
      proxy_pass http://up/;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header X-Bench yes;
    }}
  }}
}}
"""

# The chain `filters` (also bench.callgrind's phase of that name); a str.format template.
FILTERS_ROUTE = """\
  - id: api-filters
    uri: http://127.0.0.1:{upstream_port}
    predicates:
      - Path=/fapi/**
    filters:
      - StripPrefix=1
      - AddRequestHeader=X-Bench, yes
      - name: RequestRateLimiter
        args:
          redis-rate-limiter.replenishRate: 1000000
          redis-rate-limiter.burstCapacity: 2000000
          key-resolver: "#{{@remoteAddrKeyResolver}}"
"""

GATEWAY_ROUTES = """
server:
  host: 127.0.0.1
  port: {port}
wsgate:
  access-log: false
  workers: 1
  native-http: {native_http}
  redis: {{url: "redis://127.0.0.1:{redis_port}/0", prefix: "bench-http:"}}
routes:
  - id: api
    uri: http://127.0.0.1:{upstream_port}
    predicates:
      - Path=/api/**
    filters:
      - StripPrefix=1
""" + FILTERS_ROUTE

_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


CHAINS = ("plain", "unique", "filters")


def find_wrk() -> str:
    """wrk's path, installing Debian's package when it is missing."""
    path = shutil.which("wrk")
    if path:
        return path
    print("installing wrk (Debian package)...", file=sys.stderr, flush=True)
    subprocess.run(["apt-get", "install", "-y", "-q", "--no-install-recommends", "wrk"], check=False,
                   stdout=subprocess.DEVNULL)
    path = shutil.which("wrk")
    if path is None:
        raise SystemExit("wrk is not installed and could not be installed")
    return path


def parse_wrk(text: str) -> dict[str, float]:
    """Requests, non-2xx answers, requests/s, p50 and p99 (ms) from wrk's `--latency` output."""
    def latency(pct: str) -> float:
        match = re.search(rf"^\s*{pct}%\s+([\d.]+)(us|ms|s)\s*$", text, re.M)
        if match is None:
            raise ValueError(f"wrk printed no {pct}% latency:\n{text}")
        return float(match.group(1)) * _UNITS[match.group(2)]

    requests = re.search(r"^\s*(\d+) requests in", text, re.M)
    rate = re.search(r"^Requests/sec:\s*([\d.]+)", text, re.M)
    if requests is None or rate is None:
        raise ValueError(f"unexpected wrk output:\n{text}")
    non2xx = re.search(r"Non-2xx or 3xx responses:\s*(\d+)", text)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    return {"requests": float(requests.group(1)), "rps": float(rate.group(1)),
            "p50_ms": latency("50"), "p99_ms": latency("99"),
            "non2xx": float(non2xx.group(1)) if non2xx else 0.0,
            "socket_errors": float(sum(int(g) for g in errors.groups())) if errors else 0.0}


# Each request of a connection gets a path of its own (wrk runs one Lua state per thread; one thread here).
UNIQUE_PATHS_LUA = """
local n = 0
request = function()
  n = n + 1
  return wrk.format(nil, "/api/item/" .. n)
end
"""


def measure(wrk: str, proc: ManagedProcess, url: str, *, connections: int, duration_s: float,
            script: Path | None = None) -> dict[str, float]:
    before = procstat.cpu_seconds(proc.pid)
    extra = ["-s", str(script)] if script is not None else []
    out = subprocess.run([wrk, "-t1", f"-c{connections}", f"-d{duration_s:g}s", "--latency", *extra, url],
                         check=True, capture_output=True, text=True).stdout
    cpu = procstat.cpu_seconds(proc.pid) - before
    row = parse_wrk(out)
    if row["non2xx"] or row["socket_errors"]:
        raise SystemExit(f"{url}: {row['non2xx']:.0f} non-2xx answers, {row['socket_errors']:.0f} socket errors")
    row["cpu_us_per_req"] = cpu * 1e6 / max(row["requests"], 1.0)
    return row


def run(args: argparse.Namespace, group: ProcessGroup, workdir: Path) -> dict[str, object]:
    duration_s = 3.0 if args.quick else 8.0
    wrk, nginx = find_wrk(), find_nginx()
    upstream_port, proxy_port, proxy_filters_port, gw_port, redis_port = (free_port() for _ in range(5))
    redis = group.start("redis", [redis_server_binary(), "--bind", "127.0.0.1", "--port", str(redis_port),
                                  "--save", "", "--appendonly", "no", "--dir", str(workdir)])
    redis.wait_port_ready("127.0.0.1", redis_port)
    (workdir / "upstream.conf").write_text(UPSTREAM_CONF.format(prefix=workdir, port=upstream_port))
    upstream = group.start("upstream", [nginx, "-p", str(workdir), "-c", str(workdir / "upstream.conf"),
                                        "-g", "daemon off;"])
    upstream.wait_port_ready("127.0.0.1", upstream_port)
    (workdir / "proxy.conf").write_text(PROXY_CONF.format(prefix=workdir, port=proxy_port,
                                                          filters_port=proxy_filters_port,
                                                          upstream_port=upstream_port))
    proxy = group.start("nginx", [nginx, "-p", str(workdir), "-c", str(workdir / "proxy.conf"), "-g", "daemon off;"])
    proxy.wait_port_ready("127.0.0.1", proxy_port)
    (workdir / "routes.yaml").write_text(GATEWAY_ROUTES.format(
        port=gw_port, native_http=str(args.native_http).lower(), redis_port=redis_port,
        upstream_port=upstream_port))
    gateway = group.python("gateway", "gateway", "--config", str(workdir / "routes.yaml"), "--workers", "1")
    gateway.wait_http_ready(f"http://127.0.0.1:{gw_port}/actuator/health")
    pinned = pin_apart((gateway, proxy), (upstream, redis)) if args.pin else None  # wrk inherits the others
    if pinned is not None:
        print(f"pinned: proxies on CPU {pinned[0]}, wrk/upstream/redis on {pinned[1]}", flush=True)
    unique = workdir / "unique.lua"
    unique.write_text(UNIQUE_PATHS_LUA)
    targets = {
        ("gateway", "plain"): (gateway, f"http://127.0.0.1:{gw_port}/api/item"),
        ("nginx", "plain"): (proxy, f"http://127.0.0.1:{proxy_port}/api/item"),
        ("gateway", "unique"): (gateway, f"http://127.0.0.1:{gw_port}/api/item"),
        ("nginx", "unique"): (proxy, f"http://127.0.0.1:{proxy_port}/api/item"),
        ("gateway", "filters"): (gateway, f"http://127.0.0.1:{gw_port}/fapi/item"),
        ("nginx", "filters"): (proxy, f"http://127.0.0.1:{proxy_filters_port}/api/item"),
    }
    scripts = {"unique": unique}
    for (_, chain), (proc, url) in targets.items():  # warm up: pools filled, code paths hot
        measure(wrk, proc, url, connections=args.connections, duration_s=1, script=scripts.get(chain))
    rows: list[dict[str, object]] = []
    for chain in CHAINS:
        runs: dict[str, list[dict[str, float]]] = {"gateway": [], "nginx": []}
        for i in range(args.repeat):
            order = ["gateway", "nginx"] if i % 2 == 0 else ["nginx", "gateway"]
            for name in order:
                proc, url = targets[(name, chain)]
                runs[name].append(measure(wrk, proc, url, connections=args.connections, duration_s=duration_s,
                                          script=scripts.get(chain)))
        for name, measured in runs.items():
            row: dict[str, object] = {"proxy": name, "chain": chain, "runs": len(measured)}
            for key in ("cpu_us_per_req", "rps", "p50_ms", "p99_ms"):
                row[key] = statistics.median(r[key] for r in measured)
            rows.append(row)
            print(f"{name:8} {chain:8} {row['cpu_us_per_req']:7.1f} us/req  {row['rps']:9.0f} req/s  "
                  f"p50 {row['p50_ms']:.2f} ms  p99 {row['p99_ms']:.2f} ms", flush=True)

    def ratio(chain: str, key: str) -> float:
        ours = next(r for r in rows if r["proxy"] == "gateway" and r["chain"] == chain)
        theirs = next(r for r in rows if r["proxy"] == "nginx" and r["chain"] == chain)
        return float(ours[key]) / float(theirs[key])  # type: ignore[arg-type]

    ratios = {f"{chain}_{key}": ratio(chain, key) for chain in CHAINS
              for key in ("cpu_us_per_req", "p99_ms")}
    for key, value in ratios.items():
        print(f"gateway/nginx {key}: {value:.2f}")
    return {"rows": rows, "ratios": ratios, "connections": args.connections, "duration_s": duration_s,
            "repeat": args.repeat, "pinned": bool(args.pin)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="3 s per measurement instead of 8 s")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--pin", action="store_true")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--native-http", action=argparse.BooleanOptionalAction, default=True,
                        help="the gateway with wsgate.native-http on, its default (--no-native-http: the Python "
                             "HTTP path)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-http-") as tmp:
        group = ProcessGroup(Path(tmp))
        try:
            result = run(args, group, Path(tmp))
        finally:
            group.stop_all()
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))
    print(f"http_cpu_ratio={result['ratios']['plain_cpu_us_per_req']:.2f}")  # type: ignore[index]
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
