"""Redis sharded by user (docs/scaling.md section 3, option A): does the per-shard load divide by S?

    python -m bench.shards [--quick] [--shards 1,2,4] [--sessions K] [--pushes P] [--json bench/out/shards.json]

For each shard count S it starts S redis-servers on free loopback ports (each in its own temporary directory,
`--save '' --appendonly no`, so `INFO commandstats` sees only this run) and two wsnode processes with
`--redis <url 0>,...,<url S-1>`, connects K sessions of K distinct users (alternately to the two nodes), then sends P
one-user pushes (`store: true`, users taken round-robin) through the push API of both nodes and waits until every
one is delivered. Per shard it reports the commands Redis ran for the connects and for the pushes (health-check
PINGs and this benchmark's INFO/CONFIG left out), per push, and its CPU; and the max/mean ratio of the shards'
push commands (1.0 = a perfectly even split). Everything runs on loopback and is stopped at the end (or at
`--deadline-s`). Per S it also prints the commands per connect, by command name, summed over the shards. Last line:
`shards_max_mean_ratio=<one value per S>`.

`--cluster 1,3` runs the same workload on a Redis Cluster of 1 and 3 masters (`--replicas R` each; the 3-master one
from `harness/redis_cluster.py`, the 1-master one a single cluster-enabled server serving all 16,384 slots): the
nodes get every cluster node as a seed, users are counted by the master of their slot (hash tag `u:<user>`), and per
master it also reports the µs Redis spent in `EVALSHA` and in `PUBLISH`/`SPUBLISH` (commandstats `usec`, the latter
inside the former), the `PUBLISH` and `SPUBLISH` calls per push, and the publications it received over the cluster
bus (`CLUSTER INFO`, plain and sharded); the replicas' CPU is summed apart.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import shutil
import sys
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis
import redis.asyncio as aioredis
from redis.crc import key_slot

from bench.fanout import API_KEY, SECRET, Stats, connect_clients
from bench.fanout_push import NodePusher
from bench.scaleout import command_calls, redis_cpu_s
from harness import ProcessGroup, free_port, redis_server_binary, scratch_group
from harness.redis_cluster import CLUSTER_SLOTS, OwnCluster, parse_cluster_nodes
from wsnode.sharding import shard_of

IGNORED = ("ping", "info", "config|resetstat", "config")  # health checks and this benchmark's own reads
# The cluster client's slot-map reads (and this benchmark's CLUSTER INFO): topology, not the pushes' work.
IGNORED_PREFIXES = ("cluster|", "command")
BUS_PUBLISH = "cluster_stats_messages_publish_received"
BUS_PUBLISH_SHARD = "cluster_stats_messages_publishshard_received"
# redis-py's asyncio RedisCluster fails a command at once (MaxConnectionsError) when its pool for a master is
# exhausted, where the standalone client's BlockingConnectionPool waits: with the node's default 64, 100 concurrent
# connects per node already got 503 "redis unavailable" (a batch here is 250 sessions over 2 nodes). The cluster
# steps give the pool room for them unless --redis-max-connections says otherwise.
CLUSTER_POOL = 256


def ignored(name: str) -> bool:
    return name in IGNORED or name.startswith(IGNORED_PREFIXES)


def work(delta: Counter[str]) -> int:
    """Commands of the system under test in a commandstats delta."""
    return sum(n for name, n in delta.items() if not ignored(name))


def usec_by_command(stats: Mapping[str, Any]) -> Counter[str]:
    """µs spent per command since the last reset, from redis-py's parsed `INFO commandstats`."""
    return Counter({name.removeprefix("cmdstat_"): int(v["usec"]) for name, v in stats.items() if isinstance(v, dict)})


def cluster_info_counters(text: str) -> dict[str, int]:
    """`CLUSTER INFO`'s integer fields (`cluster_state:ok` and other words are left out)."""
    fields = {}
    for line in text.split():
        name, sep, value = line.partition(":")
        if sep and value.lstrip("-").isdigit():
            fields[name] = int(value)
    return fields


def master_of_slots(nodes_text: str) -> list[tuple[int, int, int]]:
    """(first slot, last slot, master port) for every range a master serves, from CLUSTER NODES."""
    return sorted((first, last, node.port) for node in parse_cluster_nodes(nodes_text) if node.role == "master"
                  for first, last in node.slots)


def user_master(user: str, ranges: list[tuple[int, int, int]]) -> int:
    """The port of the master serving a user's keys (all tagged `{u:<user>}`, wsnode/cluster_keys.py)."""
    slot = key_slot(f"{{u:{user}}}".encode())
    for first, last, port in ranges:
        if first <= slot <= last:
            return port
    raise ValueError(f"slot {slot} of user {user!r} is served by no master")


@dataclass
class Backend:
    """The Redis servers one step runs on: the ones whose load is reported, the others (replicas), the node's
    `--redis` value, each user's index among `servers`, and whether they form a Cluster."""

    servers: list[int]
    others: list[int]
    redis_urls: str
    index_of: Callable[[str], int]
    cluster: bool


def start_shards(group: ProcessGroup, workdir: Path, count: int) -> list[int]:
    """`count` fresh redis-servers; their ports once each accepts connections."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("bench.shards needs redis-server (apt-get install redis-server)")
    ports = []
    for i in range(count):
        port = free_port()
        directory = workdir / f"redis-{count}-{i}"
        directory.mkdir()
        proc = group.start(f"redis-{count}-{i}", [binary, "--bind", "127.0.0.1", "--port", str(port), "--save", "",
                                                  "--appendonly", "no", "--dir", str(directory)])
        proc.wait_port_ready("127.0.0.1", port)
        ports.append(port)
    return ports


def shard_backend(group: ProcessGroup, workdir: Path, count: int) -> Backend:
    ports = start_shards(group, workdir, count)
    return Backend(ports, [], ",".join(f"redis://127.0.0.1:{port}/0" for port in ports),
                   lambda user: shard_of(user, count), cluster=False)


def one_master_cluster(group: ProcessGroup, workdir: Path) -> int:
    """A cluster-enabled redis-server serving every slot itself (`redis-cli --cluster create` wants 3 masters)."""
    port, bus = free_port(), free_port()
    directory = workdir / "cluster-1"
    directory.mkdir()
    proc = group.start("redis-cluster-1", [
        redis_server_binary(), "--bind", "127.0.0.1", "--port", str(port), "--cluster-enabled", "yes",
        "--cluster-port", str(bus), "--cluster-config-file", str(directory / "nodes.conf"), "--dir", str(directory),
        "--save", "", "--appendonly", "no"])
    proc.wait_port_ready("127.0.0.1", port)
    client = redis.Redis(host="127.0.0.1", port=port, decode_responses=True)
    try:
        client.execute_command("CLUSTER", "ADDSLOTSRANGE", 0, CLUSTER_SLOTS - 1)
        deadline = time.monotonic() + 15.0
        while "cluster_state:ok" not in str(client.execute_command("CLUSTER", "INFO")):
            if time.monotonic() > deadline:
                raise SystemExit(f"the 1-master cluster on port {port} did not reach cluster_state:ok")
            time.sleep(0.05)  # polling the server's own state: no event to wait on
    finally:
        client.close()
    return port


def cluster_backend(group: ProcessGroup, workdir: Path, masters: int, replicas: int,
                    clusters: list[OwnCluster]) -> Backend:
    if masters == 1:
        if replicas:
            raise SystemExit("--cluster 1 runs without replicas (the harness makes replicas for 3 masters or more)")
        seeds = [one_master_cluster(group, workdir)]
    else:
        own = OwnCluster(workdir / f"cluster-{masters}", masters=masters, replicas=replicas)
        clusters.append(own)
        own.start()
        seeds = list(own.nodes)
    client = redis.Redis(host="127.0.0.1", port=seeds[0], decode_responses=True)
    try:
        ranges = master_of_slots(client.execute_command("CLUSTER", "NODES"))
    finally:
        client.close()
    master_ports = sorted({port for _, _, port in ranges})
    return Backend(master_ports, [p for p in seeds if p not in master_ports],
                   ",".join(f"redis://127.0.0.1:{port}/0" for port in seeds),
                   lambda user: master_ports.index(user_master(user, ranges)), cluster=True)


def start_nodes(group: ProcessGroup, urls: str, label: str, prefix: str, max_connections: int | None) -> list[int]:
    """Two nodes on the given Redis; their ports once /health is UP."""
    pool = ["--redis-max-connections", str(max_connections)] if max_connections else []
    ports = []
    for i in range(2):
        port = free_port()
        node_id = f"shards{label}-{i}"
        proc = group.python(node_id, "wsnode", "--host", "127.0.0.1", "--port", str(port), "--node-id", node_id,
                            "--redis", urls, "--redis-prefix", prefix, "--jwt-secret", SECRET, "--api-key", API_KEY,
                            *pool, env={"WSNODE_LOG_LEVEL": "WARNING"})
        proc.wait_http_ready(f"http://127.0.0.1:{port}/health")
        ports.append(port)
    return ports


async def snapshot(clients: list[aioredis.Redis]) -> list[Counter[str]]:
    return [await command_calls(c) for c in clients]


async def usec_snapshot(clients: list[aioredis.Redis]) -> list[Counter[str]]:
    return [usec_by_command(await c.info("commandstats")) for c in clients]


async def bus_publications(clients: list[aioredis.Redis], counter: str = BUS_PUBLISH) -> list[int]:
    """Publications each node received over the cluster bus so far (`counter`: plain or sharded)."""
    out = []
    for c in clients:
        text = await c.execute_command("CLUSTER", "INFO")
        out.append(cluster_info_counters(text.decode() if isinstance(text, bytes) else str(text)).get(counter, 0))
    return out


async def measure(backend: Backend, label: str, group: ProcessGroup, args: argparse.Namespace) -> dict[str, Any]:
    shard_count = len(backend.servers)
    pool = args.redis_max_connections or (CLUSTER_POOL if backend.cluster else None)
    node_ports = start_nodes(group, backend.redis_urls, label, prefix="bench-shards:", max_connections=pool)
    clients = [aioredis.Redis(host="127.0.0.1", port=port) for port in backend.servers]
    replica_clients = [aioredis.Redis(host="127.0.0.1", port=port) for port in backend.others]
    sink = Stats()
    users = [f"bu{i}" for i in range(args.sessions)]
    sessions: list[Any] = []
    pushers = [NodePusher(port, API_KEY, in_flight=args.in_flight) for port in node_ports]
    try:
        before = await snapshot(clients)
        sessions = await connect_clients("ours", node_ports, users, sink)
        after_connect = await snapshot(clients)
        for pusher in pushers:
            await pusher.start()
        cpu_before = [await redis_cpu_s(c) for c in clients]
        replica_cpu_before = [await redis_cpu_s(c) for c in replica_clients]
        usec_before = await usec_snapshot(clients)
        bus_before = await bus_publications(clients) if backend.cluster else []
        shard_bus_before = await bus_publications(clients + replica_clients, BUS_PUBLISH_SHARD) \
            if backend.cluster else []
        done = sink.expect(args.pushes)
        started = time.perf_counter()
        slots = asyncio.Semaphore(args.in_flight * len(pushers))

        async def one(i: int) -> None:
            async with slots:
                await pushers[i % len(pushers)].push({"to": {"users": [users[i % len(users)]]}, "module": "bench",
                                                      "event": "tick", "data": {"i": i}})

        await asyncio.gather(*(one(i) for i in range(args.pushes)))
        with contextlib.suppress(TimeoutError):  # the report says how many arrived
            await asyncio.wait_for(done, args.timeout_s)
        elapsed = time.perf_counter() - started
        after_push = await snapshot(clients)
        cpu = [await redis_cpu_s(c) - b for c, b in zip(clients, cpu_before, strict=True)]
        replica_cpu = [await redis_cpu_s(c) - b for c, b in zip(replica_clients, replica_cpu_before, strict=True)]
        usec = [a - b for a, b in zip(await usec_snapshot(clients), usec_before, strict=True)]
        bus = [a - b for a, b in zip(await bus_publications(clients), bus_before, strict=True)] \
            if backend.cluster else []
        shard_bus = [a - b for a, b in zip(await bus_publications(clients + replica_clients, BUS_PUBLISH_SHARD),
                                           shard_bus_before, strict=True)] if backend.cluster else []
    finally:
        for pusher in pushers:
            pusher.close()
        for session in sessions:
            if session.transport is not None:
                session.transport.close()
        for c in clients + replica_clients:
            await c.aclose()
    connect_cmds = [work(a - b) for a, b in zip(after_connect, before, strict=True)]
    # Which commands a connect costs, summed over the shards (the refresh heartbeats of the window are in it too).
    connect_by_command: Counter[str] = Counter()
    for a, b in zip(after_connect, before, strict=True):
        connect_by_command.update({name: n for name, n in (a - b).items() if not ignored(name)})
    push_cmds = [work(a - b) for a, b in zip(after_push, after_connect, strict=True)]
    push_by_command: Counter[str] = Counter()
    for a, b in zip(after_push, after_connect, strict=True):
        push_by_command.update({name: n for name, n in (a - b).items() if not ignored(name)})
    users_per_shard = [0] * shard_count
    pushes_per_shard = [0] * shard_count
    index = {user: backend.index_of(user) for user in users}
    for user in users:
        users_per_shard[index[user]] += 1
    for i in range(args.pushes):
        pushes_per_shard[index[users[i % len(users)]]] += 1
    mean = sum(push_cmds) / shard_count
    cluster: dict[str, Any] = {}
    if backend.cluster:
        cluster = {
            "redis_cpu_us_per_push_total": sum(cpu) * 1e6 / args.pushes,
            "evalsha_us_per_push_per_master": [u["evalsha"] / args.pushes for u in usec],
            "publish_us_per_push_per_master": [u["publish"] / args.pushes for u in usec],
            "spublish_us_per_push_per_master": [u["spublish"] / args.pushes for u in usec],
            "publish_calls_per_push_per_master": [(a - b)["publish"] / args.pushes
                                                  for a, b in zip(after_push, after_connect, strict=True)],
            "spublish_calls_per_push_per_master": [(a - b)["spublish"] / args.pushes
                                                   for a, b in zip(after_push, after_connect, strict=True)],
            "shard_bus_publications_received_per_push_masters_then_replicas": [n / args.pushes for n in shard_bus],
            "commands_us_per_push_per_master": [sum(n for name, n in u.items() if not ignored(name)) / args.pushes
                                                for u in usec],
            "bus_publications_received_per_push_per_master": [n / args.pushes for n in bus],
            "replicas": len(backend.others),
            "replica_cpu_us_per_push_total": sum(replica_cpu) * 1e6 / args.pushes,
        }
    return {
        "label": label, "cluster": backend.cluster, **cluster,
        "shards": shard_count, "sessions": len(sessions), "users_per_shard": users_per_shard,
        "pushes": args.pushes, "pushes_per_shard": pushes_per_shard, "delivered": sink.deliveries,
        "pushes_per_s": args.pushes / elapsed if elapsed > 0 else None,
        "connect_commands_per_shard": connect_cmds,
        "connect_commands_per_session": sum(connect_cmds) / len(sessions) if sessions else None,
        "connect_commands_per_session_by_command": {name: n / len(sessions) for name, n in
                                                    connect_by_command.most_common()} if sessions else {},
        "push_commands_per_shard": push_cmds,
        "push_commands_per_push_per_shard": [n / args.pushes for n in push_cmds],
        "push_commands_per_push_total": sum(push_cmds) / args.pushes,
        "push_commands_per_push_by_command": {name: n / args.pushes for name, n in push_by_command.most_common()},
        "redis_cpu_us_per_push_per_shard": [s * 1e6 / args.pushes for s in cpu],
        "max_mean_ratio": max(push_cmds) / mean if mean else None,
        "connect_max_mean_ratio": max(connect_cmds) / (sum(connect_cmds) / shard_count) if any(connect_cmds) else None,
    }


async def run(args: argparse.Namespace, group: ProcessGroup, workdir: Path) -> list[dict[str, Any]]:
    steps = []
    plan = [(f"S={n}", False, n) for n in args.shards] + [(f"cluster={n}", True, n) for n in args.cluster]
    for label, on_cluster, count in plan:
        clusters: list[OwnCluster] = []
        try:
            backend = cluster_backend(group, workdir, count, args.replicas, clusters) if on_cluster \
                else shard_backend(group, workdir, count)
            step = await measure(backend, label.replace("=", ""), group, args)
        finally:
            for own in clusters:
                own.stop()
        steps.append(step)
        per_push = " ".join(f"{n:.2f}" for n in step["push_commands_per_push_per_shard"])
        print(f"{label}: {step['delivered']}/{step['pushes']} delivered; commands per push by shard [{per_push}] "
              f"(total {step['push_commands_per_push_total']:.2f}); max/mean shard load {step['max_mean_ratio']:.3f}; "
              f"users by shard {step['users_per_shard']}; "
              f"connect commands by shard {step['connect_commands_per_shard']}", flush=True)
        by_command = ", ".join(f"{name} {n:.2f}" for name, n in step["connect_commands_per_session_by_command"].items())
        print(f"{label}: Redis commands per connect {step['connect_commands_per_session']:.2f} ({by_command}); "
              f"Redis CPU µs per push by shard "
              f"{[round(us) for us in step['redis_cpu_us_per_push_per_shard']]}", flush=True)
        if step["cluster"]:
            cpu = [round(us) for us in step["redis_cpu_us_per_push_per_shard"]]
            print(f"{label}: per master, µs per push: CPU {cpu} "
                  f"(sum {step['redis_cpu_us_per_push_total']:.0f}), in commands "
                  f"{[round(us) for us in step['commands_us_per_push_per_master']]}, EVALSHA "
                  f"{[round(us) for us in step['evalsha_us_per_push_per_master']]}, PUBLISH "
                  f"{[round(us, 1) for us in step['publish_us_per_push_per_master']]}, SPUBLISH "
                  f"{[round(us, 1) for us in step['spublish_us_per_push_per_master']]}; calls per push: PUBLISH "
                  f"{[round(n, 2) for n in step['publish_calls_per_push_per_master']]}, SPUBLISH "
                  f"{[round(n, 2) for n in step['spublish_calls_per_push_per_master']]}; bus publications received "
                  f"per push {[round(n, 2) for n in step['bus_publications_received_per_push_per_master']]}, sharded "
                  f"(masters, then replicas) "
                  f"{[round(n, 2) for n in step['shard_bus_publications_received_per_push_masters_then_replicas']]}; "
                  f"{step['replicas']} replicas, CPU {step['replica_cpu_us_per_push_total']:.0f} µs per push in all",
                  flush=True)
        group.stop_all()  # this S's nodes and shards; the next S starts fresh ones
        group.processes.clear()
    return steps


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer sessions and pushes (development)")
    parser.add_argument("--shards", help="standalone shard counts to measure, comma-separated (default 1,2,4, "
                                          "none with --cluster)")
    parser.add_argument("--cluster", default="", help="Redis Cluster master counts to measure, comma-separated")
    parser.add_argument("--replicas", type=int, default=0, help="replicas per master with --cluster")
    parser.add_argument("--redis-max-connections", type=int, help=f"the nodes' pool per Redis server (default: the "
                                                                   f"node's own; {CLUSTER_POOL} on a Cluster)")
    parser.add_argument("--sessions", type=int, default=2000, help="sessions, one user each")
    parser.add_argument("--pushes", type=int, default=10000, help="one-user pushes per shard count")
    parser.add_argument("--in-flight", type=int, default=8, help="pushes in flight per node")
    parser.add_argument("--timeout-s", type=float, default=30.0, help="wait for deliveries at most this long")
    parser.add_argument("--deadline-s", type=float, default=300.0, help="stop everything after this long")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    try:
        args.cluster = [int(n) for n in args.cluster.split(",") if n.strip()]
        args.shards = [int(n) for n in (args.shards if args.shards is not None else
                                         "" if args.cluster else "1,2,4").split(",") if n.strip()]
    except ValueError:
        parser.error("--shards and --cluster take comma-separated counts")
    if not args.shards + args.cluster or min(args.shards + args.cluster) < 1 \
            or min(args.sessions, args.pushes, args.in_flight) < 1:
        parser.error("--shards, --cluster, --sessions, --pushes and --in-flight must be at least 1")
    if 2 in args.cluster or args.replicas < 0:
        parser.error("--cluster takes 1 or at least 3 masters (redis-cli --cluster create wants 3); --replicas >= 0")
    if args.quick:
        args.sessions, args.pushes = min(args.sessions, 1000), min(args.pushes, 1000)
    import uvloop

    with scratch_group("wsgate-shards-") as (workdir, group):
        steps = uvloop.run(asyncio.wait_for(run(args, group, workdir), args.deadline_s))
    result = {"steps": steps, "sessions": args.sessions, "pushes": args.pushes, "quick": args.quick,
              "replicas": args.replicas}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))
    print("shards_max_mean_ratio=" + ",".join(f"{s['max_mean_ratio']:.3f}" for s in steps))
    if args.cluster:
        print("cluster_redis_cpu_us_per_push=" + ",".join(f"{s['label']}:{s['redis_cpu_us_per_push_total']:.0f}"
                                                          for s in steps if s["cluster"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
