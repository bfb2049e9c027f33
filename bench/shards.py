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
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from bench.fanout import API_KEY, SECRET, Stats, connect_clients
from bench.fanout_push import NodePusher
from bench.scaleout import command_calls, redis_cpu_s
from harness import ProcessGroup, free_port, scratch_group
from wsnode.sharding import shard_of

IGNORED = ("ping", "info", "config|resetstat", "config")  # health checks and this benchmark's own reads


def work(delta: Counter[str]) -> int:
    """Commands of the system under test in a commandstats delta."""
    return sum(n for name, n in delta.items() if name not in IGNORED)


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


def start_nodes(group: ProcessGroup, shard_ports: list[int], prefix: str) -> list[int]:
    """Two nodes on every shard; their ports once /health is UP."""
    urls = ",".join(f"redis://127.0.0.1:{port}/0" for port in shard_ports)
    ports = []
    for i in range(2):
        port = free_port()
        node_id = f"shards{len(shard_ports)}-{i}"
        proc = group.python(node_id, "wsnode", "--host", "127.0.0.1", "--port", str(port), "--node-id", node_id,
                            "--redis", urls, "--redis-prefix", prefix, "--jwt-secret", SECRET, "--api-key", API_KEY,
                            env={"WSNODE_LOG_LEVEL": "WARNING"})
        proc.wait_http_ready(f"http://127.0.0.1:{port}/health")
        ports.append(port)
    return ports


async def snapshot(clients: list[aioredis.Redis]) -> list[Counter[str]]:
    return [await command_calls(c) for c in clients]


async def measure(shard_count: int, group: ProcessGroup, workdir: Path, args: argparse.Namespace) -> dict[str, Any]:
    shard_ports = start_shards(group, workdir, shard_count)
    node_ports = start_nodes(group, shard_ports, prefix="bench-shards:")
    clients = [aioredis.Redis(host="127.0.0.1", port=port) for port in shard_ports]
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
    finally:
        for pusher in pushers:
            pusher.close()
        for session in sessions:
            if session.transport is not None:
                session.transport.close()
        for c in clients:
            await c.aclose()
    connect_cmds = [work(a - b) for a, b in zip(after_connect, before, strict=True)]
    # Which commands a connect costs, summed over the shards (the refresh heartbeats of the window are in it too).
    connect_by_command: Counter[str] = Counter()
    for a, b in zip(after_connect, before, strict=True):
        connect_by_command.update({name: n for name, n in (a - b).items() if name not in IGNORED})
    push_cmds = [work(a - b) for a, b in zip(after_push, after_connect, strict=True)]
    users_per_shard = [0] * shard_count
    pushes_per_shard = [0] * shard_count
    for user in users:
        users_per_shard[shard_of(user, shard_count)] += 1
    for i in range(args.pushes):
        pushes_per_shard[shard_of(users[i % len(users)], shard_count)] += 1
    mean = sum(push_cmds) / shard_count
    return {
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
        "redis_cpu_us_per_push_per_shard": [s * 1e6 / args.pushes for s in cpu],
        "max_mean_ratio": max(push_cmds) / mean if mean else None,
        "connect_max_mean_ratio": max(connect_cmds) / (sum(connect_cmds) / shard_count) if any(connect_cmds) else None,
    }


async def run(args: argparse.Namespace, group: ProcessGroup, workdir: Path) -> list[dict[str, Any]]:
    steps = []
    for count in args.shards:
        step = await measure(count, group, workdir, args)
        steps.append(step)
        per_push = " ".join(f"{n:.2f}" for n in step["push_commands_per_push_per_shard"])
        print(f"S={count}: {step['delivered']}/{step['pushes']} delivered; commands per push by shard [{per_push}] "
              f"(total {step['push_commands_per_push_total']:.2f}); max/mean shard load {step['max_mean_ratio']:.3f}; "
              f"users by shard {step['users_per_shard']}; "
              f"connect commands by shard {step['connect_commands_per_shard']}", flush=True)
        by_command = ", ".join(f"{name} {n:.2f}" for name, n in step["connect_commands_per_session_by_command"].items())
        print(f"S={count}: Redis commands per connect {step['connect_commands_per_session']:.2f} ({by_command}); "
              f"Redis CPU µs per push by shard "
              f"{[round(us) for us in step['redis_cpu_us_per_push_per_shard']]}", flush=True)
        group.stop_all()  # this S's nodes and shards; the next S starts fresh ones
        group.processes.clear()
    return steps


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer sessions and pushes (development)")
    parser.add_argument("--shards", default="1,2,4", help="shard counts to measure, comma-separated")
    parser.add_argument("--sessions", type=int, default=2000, help="sessions, one user each")
    parser.add_argument("--pushes", type=int, default=10000, help="one-user pushes per shard count")
    parser.add_argument("--in-flight", type=int, default=8, help="pushes in flight per node")
    parser.add_argument("--timeout-s", type=float, default=30.0, help="wait for deliveries at most this long")
    parser.add_argument("--deadline-s", type=float, default=300.0, help="stop everything after this long")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    try:
        args.shards = [int(n) for n in args.shards.split(",") if n.strip()]
    except ValueError:
        parser.error("--shards takes comma-separated counts")
    if not args.shards or min(args.shards) < 1 or min(args.sessions, args.pushes, args.in_flight) < 1:
        parser.error("--shards, --sessions, --pushes and --in-flight must be at least 1")
    if args.quick:
        args.sessions, args.pushes = min(args.sessions, 1000), min(args.pushes, 1000)
    import uvloop

    with scratch_group("wsgate-shards-") as (workdir, group):
        steps = uvloop.run(asyncio.wait_for(run(args, group, workdir), args.deadline_s))
    result = {"steps": steps, "sessions": args.sessions, "pushes": args.pushes, "quick": args.quick}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))
    print("shards_max_mean_ratio=" + ",".join(f"{s['max_mean_ratio']:.3f}" for s in steps))
    return 0


if __name__ == "__main__":
    sys.exit(main())
