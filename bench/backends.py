"""How backends push: HTTP, the Redis stream, RabbitMQ and the outbox, on the same two nodes in one run.

    python -m bench.backends [--quick] [--users K] [--pushes N] [--rate R] [--latency-pushes M] [--json PATH]
                             [--append-results bench/RESULTS.md]

Starts Redis (the one answering at $REDIS_URL / 127.0.0.1:6379, or a new one), a PostgreSQL database of its own on
the machine's server (created and dropped; `WSGATE_BENCH_PG_DSN` names the admin DSN, default
postgresql://postgres@127.0.0.1:5432/postgres) with the outbox tables, a RabbitMQ queue of its own on the machine's
broker (`WSGATE_BENCH_AMQP_URL`), and two nodes consuming both. K users connect, alternately to the two nodes. For
each backend, in turn:
- throughput: N one-user pushes (users round-robin, `store: true`) enqueued as fast as the producer allows with 32
  in flight; pushes/s = N / (first enqueue -> last delivery);
- latency: M pushes paced at R per second, each carrying its enqueue time; p50/p99 of enqueue -> client delivery.
Producers: HTTP = POST /api/v1/push to both nodes (keep-alive); stream = XADD to `wsgate:push`; RabbitMQ = publish
with confirms (persistent); outbox = one INSERT per transaction (a pool of 8 connections), as backends write them.
Everything runs on loopback and stops at the end. Last line: `backends_pushes_per_s=http:..,stream:..,...`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import os
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aio_pika
import asyncpg
import redis.asyncio as aioredis

from bench.fanout import API_KEY, SECRET, Stats, connect_clients, paced, percentile_ms
from bench.fanout_push import NodePusher
from harness import ProcessGroup, delete_prefix, free_port, provide_redis, unique_prefix
from tests.wsnode.brokers import delete_topology

AMQP_URL = os.environ.get("WSGATE_BENCH_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
PG_ADMIN_DSN = os.environ.get("WSGATE_BENCH_PG_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
BACKENDS = ("http", "stream", "amqp", "outbox")
IN_FLIGHT = 32
Send = Callable[[dict[str, Any]], Awaitable[None]]


@contextlib.asynccontextmanager
async def producers(ports: list[int], redis_url: str, prefix: str, queue: str,
                    dsn: str) -> AsyncIterator[dict[str, Send]]:
    """One `send(body)` per backend; each returns once its system holds the push (202, XADD, confirm, commit)."""
    http = [NodePusher(port, API_KEY, in_flight=IN_FLIGHT // 2) for port in ports]
    for pusher in http:
        await pusher.start()
    turn = iter(range(1 << 62))
    redis = aioredis.from_url(redis_url)
    amqp = await aio_pika.connect(AMQP_URL)
    channel = await amqp.channel(publisher_confirms=True)
    pool = await asyncpg.create_pool(dsn, min_size=8, max_size=8)
    assert pool is not None
    slots = asyncio.Semaphore(IN_FLIGHT)

    async def via_http(body: dict[str, Any]) -> None:
        await http[next(turn) % len(http)].push(body)

    async def via_stream(body: dict[str, Any]) -> None:
        async with slots:
            await redis.xadd(f"{prefix}wsgate:push", {"payload": json.dumps(body, separators=(",", ":"))})

    async def via_amqp(body: dict[str, Any]) -> None:
        async with slots:
            await channel.default_exchange.publish(aio_pika.Message(
                json.dumps(body, separators=(",", ":")).encode(), message_id=uuid.uuid4().hex, timestamp=time.time(),
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT), routing_key=queue)

    async def via_outbox(body: dict[str, Any]) -> None:
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute("INSERT INTO wsgate_outbox (payload) VALUES ($1)", json.dumps(body))

    try:
        yield {"http": via_http, "stream": via_stream, "amqp": via_amqp, "outbox": via_outbox}
    finally:
        for pusher in http:
            pusher.close()
        await redis.aclose()
        await amqp.close()
        await pool.close()


async def measure(send: Send, sink: Stats, users: list[str], args: argparse.Namespace) -> dict[str, Any]:
    """Throughput (as fast as the producer goes), then latency (paced), for one backend."""
    done = sink.expect(args.pushes)
    start = time.perf_counter()
    slots = asyncio.Semaphore(IN_FLIGHT)

    async def blast(i: int) -> None:
        async with slots:
            await send({"to": {"users": [users[i % len(users)]]}, "module": "bench", "data": {"i": i}})

    await asyncio.gather(*(blast(i) for i in range(args.pushes)))
    enqueued_s = time.perf_counter() - start
    await asyncio.wait_for(done, args.deadline_s)
    elapsed = time.perf_counter() - start
    sink.latencies_s.clear()
    done = sink.expect(args.latency_pushes)
    await paced(args.rate, args.latency_pushes, lambda i: send(
        {"to": {"users": [users[i % len(users)]]}, "module": "bench", "data": {"t0": time.perf_counter()}}))
    await asyncio.wait_for(done, args.deadline_s)
    return {"pushes": args.pushes, "pushes_per_s": round(args.pushes / elapsed, 1),
            "enqueue_per_s": round(args.pushes / enqueued_s, 1), "latency_pushes": args.latency_pushes,
            "rate_per_s": args.rate, "p50_ms": round(percentile_ms(sink.latencies_s, 0.50), 2),
            "p99_ms": round(percentile_ms(sink.latencies_s, 0.99), 2),
            "max_ms": round(percentile_ms(sink.latencies_s, 1.0), 2)}


async def run(args: argparse.Namespace, redis_url: str, prefix: str, procs: ProcessGroup) -> dict[str, Any]:
    from wsnode.outbox import init_schema

    queue = f"wsgate.bench.{uuid.uuid4().hex[:8]}"
    database = f"wsgate_bench_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(PG_ADMIN_DSN)
    await admin.execute(f"CREATE DATABASE {database}")
    dsn = urlunsplit(urlsplit(PG_ADMIN_DSN)._replace(path=f"/{database}"))
    try:
        await init_schema(dsn)
        ports = [free_port(), free_port()]
        for i, port in enumerate(ports):
            node = procs.python(f"node-{i}", "wsnode", "--host", "127.0.0.1", "--port", str(port), "--node-id",
                                f"bench-{i}", "--redis", redis_url, "--redis-prefix", prefix, "--jwt-secret", SECRET,
                                "--api-key", API_KEY, "--amqp-url", AMQP_URL, "--amqp-queue", queue,
                                "--outbox-dsn", dsn, env={"WSNODE_LOG_LEVEL": "WARNING"})
            await node.wait_http_ready_async(f"http://127.0.0.1:{port}/health")
        sink = Stats()
        users = [f"b{i}" for i in range(args.users)]
        clients = await connect_clients("wsnode", ports, users, sink)
        results: dict[str, Any] = {}
        async with producers(ports, redis_url, prefix, queue, dsn) as sends:
            for name in args.backends:
                results[name] = await measure(sends[name], sink, users, args)
                print(f"{name}: {results[name]}", file=sys.stderr, flush=True)
        for client in clients:
            if client.transport is not None:
                client.transport.close()
        return results
    finally:
        procs.stop_all()
        await admin.execute(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")
        await admin.close()
        with contextlib.suppress(Exception):
            await delete_topology(AMQP_URL, queue)


def markdown(results: dict[str, Any], args: argparse.Namespace, command: str) -> str:
    when = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "", "## Backends: HTTP, Redis stream, RabbitMQ, outbox (`python -m bench.backends`)", "",
        f"`{command}` ({when}; two nodes, {args.users} users connected alternately to them, the machine's RabbitMQ "
        "and PostgreSQL, Redis on loopback; the 2 cores shared with the load generator and other work). "
        f"Throughput: {args.pushes} one-user stored pushes enqueued with {IN_FLIGHT} in flight, counted to the last "
        f"delivery. Latency: {args.latency_pushes} pushes paced at {args.rate}/s, enqueue to client delivery.", "",
        "| backend | pushes/s (to delivery) | enqueue/s | p50 ms | p99 ms | max ms |", "|---|---|---|---|---|---|"]
    for name, row in results.items():
        lines.append(f"| {name} | {row['pushes_per_s']} | {row['enqueue_per_s']} | {row['p50_ms']} | "
                     f"{row['p99_ms']} | {row['max_ms']} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.backends", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small counts (about 20 s)")
    parser.add_argument("--users", type=int, default=None)
    parser.add_argument("--pushes", type=int, default=None)
    parser.add_argument("--latency-pushes", type=int, default=None)
    parser.add_argument("--rate", type=float, default=None, help="pushes per second in the latency phase")
    parser.add_argument("--backends", default=",".join(BACKENDS))
    parser.add_argument("--deadline-s", type=float, default=60.0)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--append-results", type=Path, default=None, help="append a section to this markdown file")
    args = parser.parse_args(argv)
    defaults = (20, 1000, 300, 200.0) if args.quick else (100, 5000, 1000, 300.0)
    for name, value in zip(("users", "pushes", "latency_pushes", "rate"), defaults, strict=True):
        if getattr(args, name) is None:
            setattr(args, name, value)
    args.backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    unknown = set(args.backends) - set(BACKENDS)
    if unknown:
        parser.error(f"unknown backends {sorted(unknown)}; known: {', '.join(BACKENDS)}")
    log_dir = Path(tempfile.mkdtemp(prefix="wsgate-bench-backends-"))
    with provide_redis(log_dir) as (redis_info, _):
        procs = ProcessGroup(log_dir)
        prefix = unique_prefix("bench-backends")
        try:
            results = asyncio.run(run(args, redis_info.url, prefix, procs))
        finally:
            procs.stop_all()
            delete_prefix(redis_info, prefix)
    command = "python -m bench.backends " + " ".join(argv if argv is not None else sys.argv[1:])
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"command": command, "results": results}, indent=2))
    text = markdown(results, args, command.strip())
    print(text)
    if args.append_results is not None:
        with args.append_results.open("a") as out:
            out.write(text)
    print("backends_pushes_per_s=" + ",".join(f"{k}:{v['pushes_per_s']}" for k, v in results.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
