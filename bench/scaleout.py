"""Scale-out simulation: cross-node Redis messages per push as push nodes are added (1, 2, 3, 4 nodes, 2 gateways).

    python -m bench.scaleout [--quick] [--max-nodes 4] [--gateways 2] [--json bench/out/scaleout.json]

Starts its own redis-server on a free port (so Redis' command counters see only this run; the machine's Redis when
redis-server is missing), the dev Consul agent, `--gateways` gateways routing `lb:ws://<service>` to the nodes, and
adds one wsnode at a time. At each node count it connects clients through the gateways (alternately), picks the user
of the first client, and sends `--pushes` pushes to that user through a node that does NOT hold the session. A
pattern subscriber on the run's prefix sees every publication; each is weighted by the channel's subscribers
(`PUBSUB NUMSUB`), which gives the pub/sub messages Redis delivered to nodes per push. Redis `INFO commandstats`
deltas give commands per push (PINGs of health checks left out), `INFO cpu` Redis' CPU, /proc the nodes' CPU.
Then `--broadcasts` broadcasts the same way. Target: messages per one-user push independent of the node count; per
broadcast it equals the node count by design. Last line: `scaleout_messages_per_push=<one value per node count>`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import shutil
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import redis.asyncio as aioredis

from bench import procstat
from bench.fanout import API_KEY, SECRET, FanoutClient, Stats, connect_clients, paced, path_for, percentile_ms
from bench.fanout_push import NodePusher
from harness import ManagedProcess, ProcessGroup, RedisInfo, delete_prefix, free_port, provide_redis

SERVICE = "bench-ws"
T = TypeVar("T")
MARKER = "bench-marker"

GATEWAY_ROUTES = """
server:
  host: 127.0.0.1
  port: {port}
wsgate:
  access-log: false
  workers: 1
discovery:
  consul:
    address: 127.0.0.1:{consul_port}
routes:
  - id: ws
    uri: lb:ws://{service}
    predicates:
      - Path=/ws/**
    filters:
      - RewritePath=/ws/(?<path>.*), /$\\{{path}}
"""


class ScaleClient(FanoutClient):
    """A fan-out client that also remembers which node welcomed it."""

    node = ""

    def on_text(self, payload: bytes) -> None:
        if payload.startswith(b'{"type":"welcome"'):
            self.node = str(json.loads(payload).get("node", ""))
        super().on_text(payload)


@dataclass
class ChannelMonitor:
    """Counts every publication under the prefix, per channel, with a pattern subscription."""

    client: aioredis.Redis
    prefix: str
    counts: Counter[str] = field(default_factory=Counter)
    markers: int = 0
    _marker_seen: asyncio.Event = field(default_factory=asyncio.Event)
    _task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        pubsub = self.client.pubsub()
        await pubsub.psubscribe(f"{self.prefix}wsgate:*")
        self._task = asyncio.create_task(self._loop(pubsub))

    async def _loop(self, pubsub: Any) -> None:
        try:
            while True:
                message = await pubsub.get_message(timeout=1.0)
                if message is None or message.get("type") != "pmessage":
                    continue
                channel = message["channel"]
                channel = channel.decode() if isinstance(channel, bytes) else str(channel)
                if channel.endswith(MARKER):
                    self._marker_seen.set()
                else:
                    self.counts[channel.removeprefix(self.prefix)] += 1
        finally:
            with contextlib.suppress(Exception):
                await pubsub.aclose()

    async def settle(self) -> Counter[str]:
        """Every publication made before now has been counted: Redis delivers in order, so wait for a marker."""
        self._marker_seen.clear()
        await self.client.publish(f"{self.prefix}wsgate:{MARKER}", "end")
        await asyncio.wait_for(self._marker_seen.wait(), 10)
        snapshot = Counter(self.counts)
        self.counts.clear()
        return snapshot

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


async def command_calls(client: aioredis.Redis) -> Counter[str]:
    """Calls per command since the server started (INFO commandstats)."""
    stats = await client.info("commandstats")
    return Counter({name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()
                    if isinstance(v, dict)})


async def redis_cpu_s(client: aioredis.Redis) -> float:
    """CPU seconds the Redis server has used (user + system, INFO cpu)."""
    cpu = await client.info("cpu")
    return float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])


def system_calls(delta: Counter[str]) -> Counter[str]:
    """Command calls of the system under test: without health-check PINGs and this benchmark's own INFO/marker."""
    out = Counter({k: v for k, v in delta.items() if k not in ("ping", "info", "pubsub|numsub")})
    out["publish"] -= 1  # the settle marker
    return +out


async def delivered_to_nodes(client: aioredis.Redis, prefix: str, counts: Counter[str]) -> int:
    """Publications weighted by each channel's subscribers: the messages Redis handed to nodes."""
    if not counts:
        return 0
    channels = list(counts)
    numsub = await client.pubsub_numsub(*(prefix + c for c in channels))
    subscribers = {(name.decode() if isinstance(name, bytes) else str(name)).removeprefix(prefix): int(n)
                   for name, n in numsub}
    return sum(count * subscribers.get(channel, 0) for channel, count in counts.items())


@dataclass
class Cluster:
    """The processes of one run: nodes by id, gateways' ports."""

    group: ProcessGroup
    redis_url: str
    prefix: str
    consul_port: int
    nodes: dict[str, tuple[ManagedProcess, int]] = field(default_factory=dict)
    gateway_ports: list[int] = field(default_factory=list)

    def add_node(self) -> str:
        node_id = f"scale-{len(self.nodes)}"
        port = free_port()
        proc = self.group.python(
            node_id, "wsnode", "--host", "127.0.0.1", "--port", str(port), "--node-id", node_id,
            "--redis", self.redis_url, "--redis-prefix", self.prefix, "--jwt-secret", SECRET, "--api-key", API_KEY,
            "--consul", f"127.0.0.1:{self.consul_port}", "--service-name", SERVICE,
            "--consul-check-interval", "0.5", env={"WSNODE_LOG_LEVEL": "WARNING"})
        proc.wait_http_ready(f"http://127.0.0.1:{port}/health")
        self.nodes[node_id] = (proc, port)
        return node_id


async def connect(cluster: Cluster, index: int, user: str, sink: Stats, *, timeout_s: float = 20.0) -> ScaleClient:
    """Connect through gateway `index % gateways` (or straight to a node), retrying while discovery catches up."""
    loop = asyncio.get_running_loop()
    if cluster.gateway_ports:
        port = cluster.gateway_ports[index % len(cluster.gateway_ports)]
        path = "/ws" + path_for("ours", user)
    else:
        port = list(cluster.nodes.values())[index % len(cluster.nodes)][1]
        path = path_for("ours", user)
    deadline = time.monotonic() + timeout_s
    while True:
        transport = None
        try:
            transport, proto = await loop.create_connection(
                lambda: ScaleClient("ours", path, f"127.0.0.1:{port}", user, sink), "127.0.0.1", port)
            await asyncio.wait_for(proto.ready, 5)
            return proto
        except (ConnectionError, OSError, TimeoutError):
            if transport is not None:
                transport.close()
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)  # polling: the gateway learns of a new node through a Consul blocking query


async def spread_clients(cluster: Cluster, count: int, sink: Stats, *, timeout_s: float = 20.0) -> list[ScaleClient]:
    """`count` clients, reconnecting until every node holds at least one (the gateways balance round-robin)."""
    # Users new at each node count: a user's store trims beyond --store-max-count, which costs extra commands.
    tag = f"n{len(cluster.nodes)}"
    clients = [await connect(cluster, i, f"{tag}u{i}", sink) for i in range(count)]
    deadline = time.monotonic() + timeout_s
    extra = count
    while {c.node for c in clients} != set(cluster.nodes) and time.monotonic() < deadline:
        clients.append(await connect(cluster, extra, f"{tag}u{extra}", sink))
        extra += 1
    return clients


async def probe_sessions(cluster: Cluster, redis_client: aioredis.Redis, count: int) -> dict[str, Any]:
    """Redis memory and node RSS per idle session: `count` clients straight to the nodes, before and after."""
    used_before = int((await redis_client.info("memory"))["used_memory"])
    rss_before = sum(procstat.rss_bytes(proc.pid) for proc, _ in cluster.nodes.values())
    keys_before = int(await redis_client.dbsize())
    sink = Stats()
    ports = [port for _, port in cluster.nodes.values()]
    users = [f"probe{i}" for i in range(count)]
    clients = await connect_clients("ours", ports, users, sink)
    try:
        used = int((await redis_client.info("memory"))["used_memory"]) - used_before
        rss = sum(procstat.rss_bytes(proc.pid) for proc, _ in cluster.nodes.values()) - rss_before
        keys = int(await redis_client.dbsize()) - keys_before
        # Session records live in the user's set and in each node's `node:<id>:sessions` hash (wsnode/presence.py).
        key_bytes = await key_memory(redis_client, [f"{cluster.prefix}wsgate:node:*:sessions",
                                                    f"{cluster.prefix}wsgate:user:probe*"])
        key_bytes += int(await redis_client.memory_usage(f"{cluster.prefix}wsgate:sessions") or 0)
    finally:
        for c in clients:
            if c.transport is not None:
                c.transport.close()
    return {"sessions": len(clients), "redis_used_memory_per_session": used / len(clients),
            "redis_bytes_per_session": key_bytes / len(clients),
            "redis_keys_per_session": keys / len(clients), "node_rss_bytes_per_session": rss / len(clients)}


async def key_memory(client: aioredis.Redis, patterns: list[str]) -> int:
    """MEMORY USAGE summed over the keys matching `patterns` (the data, without allocator slack or buffers)."""
    total = 0
    for pattern in patterns:
        keys = [key async for key in client.scan_iter(match=pattern, count=1000)]
        async with client.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.memory_usage(key)
            total += sum(int(n or 0) for n in await pipe.execute())
    return total


def cpu_by_node(cluster: Cluster) -> dict[str, float]:
    return {node_id: procstat.cpu_seconds(proc.pid) for node_id, (proc, _) in cluster.nodes.items()}


async def measure_step(cluster: Cluster, monitor: ChannelMonitor, redis_client: aioredis.Redis,
                       args: argparse.Namespace) -> dict[str, Any]:
    sink = Stats()
    clients = await spread_clients(cluster, args.clients_per_node * len(cluster.nodes), sink)
    try:
        user_client = clients[0]
        holder = user_client.node
        push_node = next((n for n in cluster.nodes if n != holder), holder)
        pusher = NodePusher(cluster.nodes[push_node][1], API_KEY, in_flight=args.in_flight)
        await pusher.start()
        try:
            await monitor.settle()
            calls_before, cpu_before = await command_calls(redis_client), cpu_by_node(cluster)
            redis_before = await redis_cpu_s(redis_client)
            done = sink.expect(args.pushes)
            sink.latencies_s.clear()

            async def one(i: int) -> None:
                await pusher.push({"to": {"users": [user_client.user]}, "module": "bench", "event": "tick",
                                   "data": {"i": i, "t0": time.perf_counter()}})

            await paced(args.push_rate, args.pushes, one)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done, args.timeout_s)
            received = sink.deliveries
            counts = await monitor.settle()
            redis_used = await redis_cpu_s(redis_client) - redis_before
            calls = system_calls(await command_calls(redis_client) - calls_before)
            cpu_after = cpu_by_node(cluster)
            latencies = list(sink.latencies_s)
            node_messages = await delivered_to_nodes(redis_client, cluster.prefix, counts)
            others = [n for n in cluster.nodes if n not in (holder, push_node)]
            idle_cpu = sum(cpu_after[n] - cpu_before[n] for n in others)

            b_done = sink.expect(args.broadcasts * len(clients))
            b_before, b_cpu_before = await command_calls(redis_client), cpu_by_node(cluster)
            b_redis_before = await redis_cpu_s(redis_client)
            for i in range(args.broadcasts):
                await pusher.push({"to": {"all": True}, "module": "bench", "event": "all", "data": {"n": i}})
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(b_done, args.timeout_s)
            b_received = sink.deliveries
            b_counts = await monitor.settle()
            b_redis_used = await redis_cpu_s(redis_client) - b_redis_before
            b_calls = system_calls(await command_calls(redis_client) - b_before)
            b_messages = await delivered_to_nodes(redis_client, cluster.prefix, b_counts)
            b_cpu = sum(cpu_by_node(cluster).values()) - sum(b_cpu_before.values())
        finally:
            pusher.close()
    finally:
        for c in clients:
            if c.transport is not None:
                c.transport.close()
    n, b = max(args.pushes, 1), max(args.broadcasts, 1)
    return {
        "nodes": len(cluster.nodes), "gateways": len(cluster.gateway_ports), "clients": len(clients),
        "clients_per_node": dict(Counter(c.node for c in clients)), "user_node": holder, "push_node": push_node,
        "pushes": args.pushes, "received": received,
        "publishes_per_push": sum(counts.values()) / n,
        "node_messages_per_push": node_messages / n,
        "redis_commands_per_push": sum(calls.values()) / n,
        "redis_calls_per_push": {k: v / n for k, v in sorted(calls.items())},
        "redis_cpu_us_per_push": redis_used * 1e6 / n,
        "other_nodes_cpu_us_per_push": idle_cpu * 1e6 / n,
        "push_node_cpu_us_per_push": (cpu_after[push_node] - cpu_before[push_node]) * 1e6 / n,
        "user_node_cpu_us_per_push": ((cpu_after[holder] - cpu_before[holder]) * 1e6 / n
                                      if holder != push_node else None),
        "nodes_cpu_us_per_broadcast_delivery": b_cpu * 1e6 / max(b_received, 1),
        "p50_ms": percentile_ms(latencies, 0.5), "p99_ms": percentile_ms(latencies, 0.99),
        "broadcasts": args.broadcasts, "broadcast_received": b_received,
        "broadcast_expected": args.broadcasts * len(clients),
        "node_messages_per_broadcast": b_messages / b,
        "redis_commands_per_broadcast": sum(b_calls.values()) / b,
        "redis_cpu_us_per_broadcast": b_redis_used * 1e6 / b,
        "push_rate_per_s": args.push_rate,
    }


async def run(args: argparse.Namespace, group: ProcessGroup, redis_info: RedisInfo) -> dict[str, Any]:
    prefix = f"wsgate-scale-{uuid.uuid4().hex[:8]}:"
    consul_port = free_port()
    consul = group.python("devconsul", "devconsul", "--port", str(consul_port))
    consul.wait_http_ready(f"http://127.0.0.1:{consul_port}/v1/status/leader")
    cluster = Cluster(group, redis_info.url, prefix, consul_port)
    workdir = group.log_dir.parent
    for i in range(args.gateways):
        port = free_port()
        config = workdir / f"gateway-{i}.yaml"
        config.write_text(GATEWAY_ROUTES.format(port=port, consul_port=consul_port, service=SERVICE))
        gateway = group.python(f"gateway-{i}", "gateway", "--config", str(config), "--workers", "1",
                               "--log-level", "WARNING")
        gateway.wait_http_ready(f"http://127.0.0.1:{port}/actuator/health", expect=(200, 503))
        cluster.gateway_ports.append(port)
    redis_client = aioredis.Redis(host=redis_info.host, port=redis_info.port)
    monitor = ChannelMonitor(redis_client, prefix)
    steps: list[dict[str, Any]] = []
    try:
        await monitor.start()
        for _ in range(args.max_nodes):
            cluster.add_node()
            step = await measure_step(cluster, monitor, redis_client, args)
            steps.append(step)
            print(f"{step['nodes']} nodes: {step['node_messages_per_push']:.2f} node messages/push, "
                  f"{step['redis_commands_per_push']:.1f} redis commands/push, "
                  f"{step['node_messages_per_broadcast']:.2f} node messages/broadcast, "
                  f"p99 {step['p99_ms']:.2f} ms, received {step['received']}/{step['pushes']}", flush=True)
        probe = await probe_sessions(cluster, redis_client, args.probe_sessions)
        print(f"{probe['sessions']} idle sessions: Redis {probe['redis_bytes_per_session']:.0f} B/session "
              f"in keys ({probe['redis_keys_per_session']:.2f} keys; used_memory "
              f"{probe['redis_used_memory_per_session']:.0f} B/session), "
              f"node RSS {probe['node_rss_bytes_per_session']:.0f} B/session", flush=True)
    finally:
        await monitor.stop()
        await redis_client.aclose()
        delete_prefix(redis_info, prefix)
    per_push = [float(s["node_messages_per_push"]) for s in steps]
    return {"steps": steps, "session_probe": probe, "redis": redis_info.url, "prefix": prefix, "pushes": args.pushes,
            "broadcasts": args.broadcasts, "gateways": args.gateways,
            "user_push_constant": bool(per_push) and max(per_push) - min(per_push) < 0.01,
            "broadcast_grows_with_nodes": all(abs(float(s["node_messages_per_broadcast"]) - int(s["nodes"])) < 0.01
                                              for s in steps)}


@contextlib.contextmanager
def own_redis(group: ProcessGroup, workdir: Path) -> Any:
    """A fresh redis-server on a free port (clean counters); the shared one when the binary is missing."""
    binary = shutil.which("redis-server")
    if binary is None:
        with provide_redis(workdir) as (info, _):
            yield info
        return
    port = free_port()
    proc = group.start("redis", [binary, "--bind", "127.0.0.1", "--port", str(port), "--save", "",
                                 "--appendonly", "no", "--dir", str(workdir)])
    proc.wait_port_ready("127.0.0.1", port)
    yield RedisInfo("127.0.0.1", port)


def run_with_own_redis(prefix: str, main: Callable[[ProcessGroup, RedisInfo], Coroutine[Any, Any, T]]) -> T:
    """Run `main` under uvloop with a process group and a Redis of its own; the logs go to stderr if it fails."""
    import uvloop

    workdir = Path(tempfile.mkdtemp(prefix=prefix))
    group = ProcessGroup(workdir / "logs")
    try:
        with own_redis(group, workdir) as redis_info:
            return uvloop.run(main(group, redis_info))
    except BaseException:
        print(group.logs()[-8000:], file=sys.stderr)
        raise
    finally:
        group.stop_all()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer pushes and clients (development)")
    parser.add_argument("--max-nodes", type=int, default=4)
    parser.add_argument("--gateways", type=int, default=2, help="gateways the clients connect through (0: direct)")
    parser.add_argument("--clients-per-node", type=int, default=20)
    parser.add_argument("--pushes", type=int, default=1000, help="one-user pushes per node count")
    parser.add_argument("--broadcasts", type=int, default=20, help="broadcasts per node count")
    parser.add_argument("--push-rate", type=float, default=500.0, help="one-user pushes per second (paced)")
    parser.add_argument("--in-flight", type=int, default=8)
    parser.add_argument("--timeout-s", type=float, default=30.0)
    parser.add_argument("--probe-sessions", type=int, default=2000,
                        help="idle sessions opened at the end to measure Redis memory per session")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    if min(args.max_nodes, args.pushes, args.clients_per_node, args.probe_sessions) < 1 or args.gateways < 0:
        parser.error("--max-nodes, --pushes, --clients-per-node and --probe-sessions must be at least 1, "
                     "--gateways at least 0")
    if args.quick:
        args.pushes, args.broadcasts, args.clients_per_node = min(args.pushes, 200), min(args.broadcasts, 5), 4
        args.probe_sessions = min(args.probe_sessions, 500)
    result = run_with_own_redis("wsgate-scaleout-", lambda group, redis_info: run(args, group, redis_info))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))
    per_push = ",".join(f"{s['node_messages_per_push']:.2f}" for s in result["steps"])
    print(f"scaleout_messages_per_push={per_push}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
