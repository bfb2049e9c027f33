"""Consul load of the gateways' discovery: HTTP requests per gateway per second, steady and while health changes.

    python -m bench.consul_load [--gateways 2] [--workers 2] [--instances 4] [--steady-s 65] [--churn-s 20]
                                [--json bench/out/consul_load.json]

Starts the dev Consul agent, a counting TCP proxy in front of it (this process: it parses each HTTP request the
gateways send and sums the bytes answered), `--instances` instances of one service registered straight at the agent
with TTL checks, and `--gateways` gateway processes of `--workers` workers each, whose `discovery.consul.address` is
the proxy and whose one route is `lb:ws://<service>`. Once every worker has sent its first query, it counts the
requests for `--steady-s` seconds with nothing changing (each watch is a blocking query with `wait=30s`, so a
window of more than 60 s sees each renewed at least twice), then for `--churn-s` seconds while one instance's check
flips between passing and critical every `--churn-every-s` seconds. Registration and check updates go to the agent
directly, so only the gateways' requests are counted. Last line: `consul_requests_per_gateway_per_s=<steady>,<churn>`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from harness import ProcessGroup, free_port, scratch_group

SERVICE = "bench-consul-ws"
GATEWAY_ROUTES = """
wsgate:
  access-log: false
  workers: {workers}
discovery:
  consul:
    address: 127.0.0.1:{proxy_port}
routes:
  - id: ws
    uri: lb:ws://{service}
    predicates:
      - Path=/ws/**
"""


@dataclass
class RequestCounter:
    """What went through the proxy: requests by path (query string left out) and response bytes."""

    requests: Counter[str] = field(default_factory=Counter)
    response_bytes: int = 0

    def total(self) -> int:
        return sum(self.requests.values())

    def reset(self) -> tuple[Counter[str], int]:
        taken = (self.requests, self.response_bytes)
        self.requests, self.response_bytes = Counter(), 0
        return taken


def requests_in(buffer: bytearray) -> list[str]:
    """Remove each complete request from `buffer`; their paths. Bodies are skipped by Content-Length."""
    paths = []
    while (end := buffer.find(b"\r\n\r\n")) >= 0:
        head = bytes(buffer[:end]).decode("latin-1").split("\r\n")
        length = 0
        for line in head[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-length":
                length = int(value.strip())
        if len(buffer) < end + 4 + length:
            break
        del buffer[:end + 4 + length]
        parts = head[0].split(" ")
        paths.append(f"{parts[0]} {parts[1].partition('?')[0]}" if len(parts) > 1 else head[0])
    return paths


async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, counter: RequestCounter,
               *, requests: bool) -> None:
    buffer = bytearray()
    try:
        while data := await reader.read(65536):
            if requests:
                buffer += data
                counter.requests.update(requests_in(buffer))
            else:
                counter.response_bytes += len(data)
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        with contextlib.suppress(Exception):
            writer.close()


async def start_proxy(agent_port: int, counter: RequestCounter,
                      handlers: set[asyncio.Task[None]]) -> tuple[asyncio.Server, int]:
    async def handle(client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        handlers.add(task)
        try:
            agent_reader, agent_writer = await asyncio.open_connection("127.0.0.1", agent_port)
            await asyncio.gather(pipe(client_reader, agent_writer, counter, requests=True),
                                 pipe(agent_reader, client_writer, counter, requests=False))
        finally:
            handlers.discard(task)

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, int(server.sockets[0].getsockname()[1])


async def agent(session: aiohttp.ClientSession, method: str, url: str, body: object = None) -> None:
    async with session.request(method, url, json=body) as response:
        if response.status != 200:
            raise RuntimeError(f"{method} {url}: {response.status} {await response.text()}")


async def wait_for(condition: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"no {what} within {timeout_s} s")
        await asyncio.sleep(0.05)


def rates(taken: tuple[Counter[str], int], seconds: float, gateways: int, workers: int) -> dict[str, Any]:
    requests, response_bytes = taken
    total = sum(requests.values())
    return {"seconds": seconds, "requests": total, "by_path": dict(requests.most_common()),
            "requests_per_s": total / seconds, "requests_per_gateway_per_s": total / seconds / gateways,
            "requests_per_worker_per_s": total / seconds / (gateways * workers),
            "response_bytes_per_request": response_bytes / total if total else None}


async def run(args: argparse.Namespace, group: ProcessGroup, workdir: Path) -> dict[str, Any]:
    agent_port = free_port()
    consul = group.python("devconsul", "devconsul", "--port", str(agent_port), "--log-level", "WARNING")
    consul.wait_http_ready(f"http://127.0.0.1:{agent_port}/v1/status/leader")
    base = f"http://127.0.0.1:{agent_port}/v1"
    counter = RequestCounter()
    handlers: set[asyncio.Task[None]] = set()
    server, proxy_port = await start_proxy(agent_port, counter, handlers)
    async with aiohttp.ClientSession() as session:
        for i in range(args.instances):
            await agent(session, "PUT", f"{base}/agent/service/register", {
                "ID": f"{SERVICE}-{i}", "Name": SERVICE, "Address": "127.0.0.1", "Port": 20000 + i,
                "Check": {"CheckID": f"check-{i}", "Name": "ttl", "TTL": "600s", "Status": "passing"}})
        config = workdir / "routes.yaml"
        config.write_text(GATEWAY_ROUTES.format(workers=args.workers, proxy_port=proxy_port, service=SERVICE))
        for g in range(args.gateways):
            port = free_port()
            gateway = group.python(f"gateway-{g}", "gateway", "--config", str(config), "--port", str(port),
                                   "--host", "127.0.0.1", env={"WSGATE_LOG_LEVEL": "WARNING"})
            gateway.wait_http_ready(f"http://127.0.0.1:{port}/actuator/health", expect=(200, 503))
        # Every worker's first (non-blocking) query has been sent: from here on each watch is a blocking one.
        await wait_for(lambda: counter.total() >= args.gateways * args.workers, 30, "first query of every worker")
        await asyncio.sleep(1.0)  # let the answers to those first queries come back and the next queries go out
        counter.reset()
        started = time.monotonic()
        await asyncio.sleep(args.steady_s)  # the measurement window itself
        steady = rates(counter.reset(), time.monotonic() - started, args.gateways, args.workers)
        changes = 0
        started = time.monotonic()
        while time.monotonic() - started < args.churn_s:
            state = "fail" if changes % 2 == 0 else "pass"
            await agent(session, "PUT", f"{base}/agent/check/{state}/check-0")
            changes += 1
            await asyncio.sleep(args.churn_every_s)  # the churn's own pace
        churn = rates(counter.reset(), time.monotonic() - started, args.gateways, args.workers)
        churn["health_changes"] = changes
        churn["requests_per_change"] = churn["requests"] / changes if changes else None
    group.stop_all()  # the gateways and the agent first: the proxy's connections end with them
    if handlers:
        await asyncio.wait(set(handlers), timeout=5)
    server.close()
    await server.wait_closed()
    return {"gateways": args.gateways, "workers": args.workers, "instances": args.instances,
            "steady": steady, "churn": churn}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gateways", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2, help="workers per gateway")
    parser.add_argument("--instances", type=int, default=4, help="instances of the service")
    parser.add_argument("--steady-s", type=float, default=65.0, help="seconds counted with nothing changing")
    parser.add_argument("--churn-s", type=float, default=20.0, help="seconds counted while a check flips")
    parser.add_argument("--churn-every-s", type=float, default=1.0, help="seconds between health changes")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    if min(args.gateways, args.workers, args.instances) < 1 or min(args.steady_s, args.churn_s) <= 0:
        parser.error("--gateways, --workers and --instances must be at least 1, the windows above 0")
    with scratch_group("wsgate-consul-load-") as (workdir, group):
        result = asyncio.run(run(args, group, workdir))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))
    for phase in ("steady", "churn"):
        step = result[phase]
        print(f"{phase}: {step['requests']} requests in {step['seconds']:.1f} s = {step['requests_per_s']:.2f}/s, "
              f"{step['requests_per_gateway_per_s']:.3f} per gateway, {step['requests_per_worker_per_s']:.3f} per "
              f"worker; {step['response_bytes_per_request'] or 0:.0f} B answered per request; {step['by_path']}")
    print(f"churn: {result['churn']['health_changes']} health changes, "
          f"{result['churn']['requests_per_change'] or 0:.2f} requests per change")
    print(f"consul_requests_per_gateway_per_s={result['steady']['requests_per_gateway_per_s']:.3f},"
          f"{result['churn']['requests_per_gateway_per_s']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
