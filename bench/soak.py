"""Soak: N concurrent WebSocket connections through one gateway (2 workers) to two nodes, with pings and pushes.

    python -m bench.soak [--connections 10000] [--duration-s 60] [--quick] [--json bench/out/soak.json]

Starts the dev Consul agent, two nodes registered in it (the machine's Redis, or a new one, under a unique key
prefix) and `python -m gateway --workers 2` routing `/ws-svc/**` to them through discovery. Load-generator processes
(`bench.soak_client`, at most 2,500 connections each: a process may hold at most 20,000 files) connect every client
through the gateway; for the duration each client pings (app level) every few seconds while this driver pushes to a
random user every few ms and broadcasts every few seconds, through the nodes' push API. Then the clients close.

Reported: drops (connections closed unexpectedly + pushes, broadcast deliveries and pongs missing; target 0), the max
RSS of every process (gateway master and workers, nodes, Redis), and the open files of the gateway and the nodes
after all clients left against their baseline before they came (target: back to it). Last line: `soak_drops=<n>`.
`--quick` is 1,000 connections for 15 s (under a minute in all).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import redis

from bench import procstat
from harness import ManagedProcess, ProcessGroup, RedisInfo, delete_prefix, free_port, provide_redis

SECRET = "soak-secret-of-at-least-32-bytes-long"
API_KEY = "soak-key"
PER_PROCESS = 2500
SAMPLE_S = 0.5


@dataclass
class Cluster:
    """The processes under test and where they listen."""

    gateway: ManagedProcess
    gateway_port: int
    nodes: list[ManagedProcess]
    node_ports: list[int]
    redis_pid: int | None
    redis_port: int
    max_rss: dict[str, int] = field(default_factory=dict)

    def pids(self) -> dict[str, int]:
        """Every process to watch, by name (gateway workers found as the master's children)."""
        out = {"gateway-master": self.gateway.pid}
        for i, pid in enumerate(sorted(procstat.descendants(self.gateway.pid)[1:])):
            out[f"gateway-worker-{i}"] = pid
        out.update({f"node-{i}": p.pid for i, p in enumerate(self.nodes)})
        if self.redis_pid is not None:
            out["redis"] = self.redis_pid
        return out

    def sample(self) -> None:
        for name, pid in self.pids().items():
            with contextlib.suppress(OSError, IndexError):
                rss = int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * procstat._PAGE
                self.max_rss[name] = max(self.max_rss.get(name, 0), rss)

    def fds(self) -> dict[str, int]:
        """Open files of the gateway (master and workers) and of each node, less the nodes' Redis pool sockets.

        A node's Redis connection pool grows with push concurrency up to its bound (--redis-max-connections) and
        keeps its idle connections: those are counted apart (`redis_pool`), not as files left behind.
        """
        # The gateway workers' keep-alive pools of plain HTTP connections to the nodes, likewise.
        pool = sum(sockets_to_port(pid, port) for pid in procstat.descendants(self.gateway.pid)
                   for port in self.node_ports)
        out = {"gateway": procstat.open_fds(self.gateway.pid) - pool, "gateway-upstream-pool": pool}
        for i, p in enumerate(self.nodes):
            pool = sockets_to_port(p.pid, self.redis_port)
            out[f"node-{i}"] = procstat.open_fds(p.pid) - pool
            out[f"node-{i}-redis-pool"] = pool
        return out


def sockets_to_port(pid: int, port: int) -> int:
    """TCP connections of process `pid` whose remote port is `port` (its fds matched against /proc/net/tcp*)."""
    inodes = set()
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if fields[9] in inodes and int(fields[2].rsplit(":", 1)[1], 16) == port:
                    count += 1
    return count


def write_routes(directory: Path, consul: str) -> Path:
    path = directory / "routes.yaml"
    path.write_text(f"""\
wsgate:
  max-connections: 20000
  access-log: false
discovery:
  consul: {{address: "{consul}", passing-only: true}}
routes:
  - id: ws-svc
    uri: lb:ws://ws-service
    predicates:
      - Path=/ws-svc/**
    filters:
      - RewritePath=/ws-svc/(?<path>.*), /$\\{{path}}
""")
    return path


def redis_pid(info: RedisInfo) -> int | None:
    """The Redis server's pid when it runs on this machine (INFO server)."""
    client = redis.Redis(host=info.host, port=info.port)
    try:
        pid = int(client.info("server")["process_id"])
    finally:
        client.close()
    return pid if Path(f"/proc/{pid}").exists() else None


async def wait_for(condition: Callable[[], Any], what: str, *, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not await condition():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


async def start_cluster(group: ProcessGroup, workdir: Path, info: RedisInfo, prefix: str) -> Cluster:
    consul_port = free_port()
    consul = f"127.0.0.1:{consul_port}"
    group.python("devconsul", "devconsul", "--port", str(consul_port)).wait_http_ready(
        f"http://{consul}/v1/status/leader")
    node_ports = [free_port(), free_port()]
    nodes = [group.python(f"node-{i}", "wsnode", "--host", "127.0.0.1", "--port", str(port), "--node-id",
                          f"soak-{i}", "--redis", info.url, "--redis-prefix", prefix, "--consul", consul,
                          "--jwt-secret", SECRET, "--api-key", API_KEY) for i, port in enumerate(node_ports)]
    for node, port in zip(nodes, node_ports, strict=True):
        node.wait_http_ready(f"http://127.0.0.1:{port}/health")
    gateway_port = free_port()
    gateway = group.python("gateway", "gateway", "--config", str(write_routes(workdir, consul)), "--host",
                           "127.0.0.1", "--port", str(gateway_port), "--workers", "2")
    gateway.wait_http_ready(f"http://127.0.0.1:{gateway_port}/actuator/health", expect=(200, 503))
    async with aiohttp.ClientSession() as session:

        async def both_passing() -> bool:
            async with session.get(f"http://{consul}/v1/health/service/ws-service?passing") as response:
                return response.status == 200 and len(await response.json()) == 2

        async def routed() -> bool:
            # Several in a row, so that both gateway workers have seen the instances.
            for _ in range(8):
                async with session.get(f"http://127.0.0.1:{gateway_port}/ws-svc/health") as response:
                    if response.status != 200:
                        return False
            return True

        await wait_for(both_passing, "both nodes passing in Consul")
        await wait_for(routed, "the gateway routing to the nodes")
    return Cluster(gateway, gateway_port, nodes, node_ports, redis_pid(info), info.port)


@dataclass
class Driver:
    """Pushes to random users and broadcasts, remembering what was accepted (202)."""

    session: aiohttp.ClientSession
    node_ports: list[int]
    users: list[str]
    sent_unicast: dict[str, list[int]] = field(default_factory=dict)
    broadcasts: list[int] = field(default_factory=list)
    refused: int = 0
    count: int = 0

    async def push(self, to: dict[str, Any], event: str, n: int) -> bool:
        body = {"to": to, "module": "soak", "event": event, "data": {"n": n}, "store": False}
        port = self.node_ports[n % len(self.node_ports)]
        try:
            async with self.session.post(f"http://127.0.0.1:{port}/api/v1/push", json=body,
                                         headers={"Authorization": f"Bearer {API_KEY}"}) as response:
                await response.read()
                ok = response.status == 202
        except aiohttp.ClientError:
            ok = False
        if not ok:
            self.refused += 1
        return ok

    async def unicast(self, n: int) -> None:
        user = random.choice(self.users)
        if await self.push({"users": [user]}, "u", n):
            self.sent_unicast.setdefault(user, []).append(n)

    async def broadcast(self, n: int) -> None:
        if await self.push({"all": True}, "b", n):
            self.broadcasts.append(n)

    async def run(self, duration_s: float, push_interval_s: float, broadcast_interval_s: float) -> None:
        tasks: set[asyncio.Task[None]] = set()
        start = time.monotonic()
        next_broadcast = start + broadcast_interval_s / 2
        b = 0
        while (now := time.monotonic()) < start + duration_s:
            if now >= next_broadcast:
                task = asyncio.ensure_future(self.broadcast(b))
                b += 1
                next_broadcast += broadcast_interval_s
            else:
                task = asyncio.ensure_future(self.unicast(self.count))
                self.count += 1
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            delay = start + self.count * push_interval_s - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)  # pacing the producer
        if tasks:
            await asyncio.gather(*tasks)


async def start_clients(args: argparse.Namespace, port: int, workdir: Path) -> list[asyncio.subprocess.Process]:
    counts = [PER_PROCESS] * (args.connections // PER_PROCESS)
    if args.connections % PER_PROCESS:
        counts.append(args.connections % PER_PROCESS)
    procs = []
    for index, count in enumerate(counts):
        stderr = (workdir / f"client-{index}.log").open("w")
        procs.append(await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bench.soak_client", "--port", str(port), "--count", str(count), "--index",
            str(index), "--secret", SECRET, "--ping-interval-s", str(args.ping_interval_s),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=stderr))
    return procs


async def read_tagged(proc: asyncio.subprocess.Process, tag: str) -> str:
    assert proc.stdout is not None
    while line := (await proc.stdout.readline()).decode():
        if line.startswith(tag + " "):
            return line[len(tag) + 1:].strip()
    raise RuntimeError(f"load generator {proc.pid} exited before {tag}")


async def sampler(cluster: Cluster) -> None:
    while True:
        cluster.sample()
        await asyncio.sleep(SAMPLE_S)


async def soak(args: argparse.Namespace, group: ProcessGroup, workdir: Path, info: RedisInfo,
               prefix: str) -> dict[str, Any]:
    cluster = await start_cluster(group, workdir, info, prefix)
    watch = asyncio.ensure_future(sampler(cluster))
    baseline_fds = cluster.fds()
    clients = await start_clients(args, cluster.gateway_port, workdir)
    started = time.monotonic()
    ready = [json.loads(await read_tagged(p, "READY")) for p in clients]
    connected = sum(r["connected"] for r in ready)
    connect_s = time.monotonic() - started
    print(f"{connected} clients connected in {connect_s:.1f}s ({sum(len(r['failed']) for r in ready)} failed); "
          f"fds {cluster.fds()} (baseline {baseline_fds})", flush=True)
    # Pushes go to connected users only: one that never got in cannot be expected to receive.
    users = [f"w{i}-{n}" for i, r in enumerate(ready) for n in range(r["connected"] + len(r["failed"]))
             if n not in set(r["failed"])]
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64)) as session:
        driver = Driver(session, cluster.node_ports, users)
        await driver.run(args.duration_s, args.push_interval_s, args.broadcast_interval_s)
    await asyncio.sleep(args.settle_s)  # deliveries in flight reach their clients
    for proc in clients:
        assert proc.stdin is not None
        proc.stdin.write(b"STOP\n")
        await proc.stdin.drain()
    reports = [json.loads(await read_tagged(p, "REPORT")) for p in clients]
    for proc in clients:
        await proc.wait()
    left_s = time.monotonic()
    after_fds = cluster.fds()
    while left_behind(baseline_fds, after_fds) and time.monotonic() < left_s + 30:
        await asyncio.sleep(0.5)
        after_fds = cluster.fds()
    watch.cancel()
    cluster.sample()
    return summarise(args, reports, driver, cluster, baseline_fds, after_fds, connect_s)


def left_behind(baseline: dict[str, int], after: dict[str, int]) -> bool:
    """Whether some process holds more files than before the clients came (the Redis pools aside)."""
    return any(after[k] > baseline[k] for k in baseline if not k.endswith("pool"))


def summarise(args: argparse.Namespace, reports: list[dict[str, Any]], driver: Driver, cluster: Cluster,
              baseline_fds: dict[str, int], after_fds: dict[str, int], connect_s: float) -> dict[str, Any]:
    received: dict[str, list[int]] = {}
    for report in reports:
        received.update(report["unicast"])
    missing_unicast = duplicates = 0
    for user, sent in driver.sent_unicast.items():
        got = received.get(user, [])
        missing_unicast += len(set(sent) - set(got))
        duplicates += len(got) - len(set(got))
    connected = sum(r["connected"] for r in reports)
    broadcast_got = sum(int(v) for r in reports for k, v in r["broadcast"].items() if int(k) in driver.broadcasts)
    missing_broadcast = len(driver.broadcasts) * connected - broadcast_got
    unexpected = sum(r["unexpected_closes"] for r in reports)
    failed = sum(r["connect_failed"] for r in reports)
    retries = sum(r["connect_retries"] for r in reports)
    pings, pongs = sum(r["pings"] for r in reports), sum(r["pongs"] for r in reports)
    drops = unexpected + failed + missing_unicast + max(0, missing_broadcast) + (pings - pongs)
    return {
        "connections": args.connections, "connected": connected, "connect_failed": failed,
        "connect_retries": retries,
        "connect_s": round(connect_s, 1), "duration_s": args.duration_s,
        "pushes_accepted": sum(len(v) for v in driver.sent_unicast.values()), "pushes_refused": driver.refused,
        "broadcasts": len(driver.broadcasts), "missing_unicast": missing_unicast, "duplicate_unicast": duplicates,
        "missing_broadcast_deliveries": missing_broadcast, "pings": pings, "pongs": pongs,
        "unexpected_closes": unexpected, "close_codes": [r["close_codes"] for r in reports],
        "close_timeouts": sum(r["close_timeouts"] for r in reports), "drops": drops,
        "max_rss_mib": {k: round(v / 2**20, 1) for k, v in sorted(cluster.max_rss.items())},
        "fds_baseline": baseline_fds, "fds_after": after_fds,
        "node_warnings": {f"node-{i}": sum(" WARNING " in line or " ERROR " in line for line in p.log().splitlines())
                          for i, p in enumerate(cluster.nodes)},
    }


def print_summary(result: dict[str, Any]) -> None:
    print(f"connections {result['connected']}/{result['connections']} (connect failures {result['connect_failed']}"
          f" after retries, {result['connect_retries']} attempts retried, "
          f"{result['connect_s']}s to connect), held {result['duration_s']}s")
    print(f"pushes accepted {result['pushes_accepted']} (refused {result['pushes_refused']}), missing "
          f"{result['missing_unicast']}, duplicates {result['duplicate_unicast']}; broadcasts {result['broadcasts']}, "
          f"deliveries missing {result['missing_broadcast_deliveries']}")
    print(f"pings {result['pings']}, pongs {result['pongs']}; unexpected closes {result['unexpected_closes']} "
          f"(server close codes {result['close_codes']}); clients not closed within 15s {result['close_timeouts']}")
    print("max RSS MiB: " + ", ".join(f"{k} {v}" for k, v in result["max_rss_mib"].items()))
    print(f"open files baseline {result['fds_baseline']} -> after clients left {result['fds_after']}")
    print(f"node log warnings (errors) during the run: {result['node_warnings']}")
    print(f"soak_drops={result['drops']}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="1,000 connections for 15 s")
    parser.add_argument("--connections", type=int, default=10_000)
    parser.add_argument("--duration-s", type=float, default=60.0)
    parser.add_argument("--ping-interval-s", type=float, default=5.0, help="each client's app-level ping period")
    parser.add_argument("--push-interval-s", type=float, default=0.005, help="between pushes to a random user")
    parser.add_argument("--broadcast-interval-s", type=float, default=5.0)
    parser.add_argument("--settle-s", type=float, default=2.0, help="after the last push, before clients leave")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    if args.quick:
        args.connections, args.duration_s = min(args.connections, 1000), min(args.duration_s, 15.0)
    if args.connections < 1 or args.duration_s <= 0:
        parser.error("--connections must be >= 1 and --duration-s > 0")
    workdir = Path(tempfile.mkdtemp(prefix="wsgate-soak-"))
    group = ProcessGroup(workdir / "logs")
    prefix = f"wsgate-soak-{uuid.uuid4().hex[:8]}:"
    import uvloop

    try:
        with provide_redis(workdir) as (info, _):
            try:
                result = uvloop.run(soak(args, group, workdir, info, prefix))
            finally:
                group.stop_all()
                delete_prefix(info, prefix)
    except BaseException:
        print(group.logs()[-8000:], file=sys.stderr)
        print(f"logs in {workdir}", file=sys.stderr)
        raise
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))
    print_summary(result)
    return 0 if result["drops"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
