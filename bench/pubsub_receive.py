"""CPU and latency of receiving node messages: the lean subscription (wsnode/subscriber.py) against redis-py's PubSub.

    python -m bench.pubsub_receive [--messages 6000] [--rate 3000] [--rounds 3]

A separate process publishes --messages messages of about 300 bytes at --rate per second (each handled on its own,
as paced pushes are), each carrying its send time; the receiving process counts its own CPU (user + system) from
the first to the last message and the publish-to-handled latency. Rounds alternate the two receivers. The last line
is `lean_vs_redis_py_cpu=<lean / redis-py CPU per message, median>`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import redis.asyncio as aioredis
import uvloop

from harness import provide_redis
from wsnode.redis_lane import LaneTarget
from wsnode.subscriber import subscribe


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def _publish(port: int, channel: str, messages: int, rate: float) -> None:
    client = aioredis.Redis(port=port)
    started = time.perf_counter()
    for i in range(messages):
        await client.publish(channel, json.dumps({"t": time.perf_counter(), "pad": "x" * 250}))
        ahead = started + (i + 1) / rate - time.perf_counter()
        if ahead > 0:
            await asyncio.sleep(ahead)
    await client.aclose()


async def _receive(port: int, kind: str, messages: int, rate: float) -> tuple[float, float, float]:
    """CPU us per message, p50 and p99 latency in ms."""
    latencies: list[float] = []
    done = asyncio.get_running_loop().create_future()

    def on_message(channel: bytes, data: bytes) -> None:
        latencies.append(time.perf_counter() - json.loads(data)["t"])
        if len(latencies) == messages and not done.done():
            done.set_result(None)

    channel = f"bench-{uuid.uuid4().hex[:8]}"
    client = aioredis.Redis(port=port)
    reader: asyncio.Task[None] | None = None
    subscription = None
    if kind == "lean":
        subscription = await subscribe(LaneTarget(port=port), [channel], on_message, timeout_s=2.0)
    else:
        pubsub = client.pubsub()
        await pubsub.subscribe(channel)

        async def read() -> None:  # the loop wsnode/delivery.py runs on redis-py
            while True:
                message = await pubsub.get_message(timeout=1.0)
                if message is not None and message["type"] == "message":
                    on_message(message["channel"], message["data"])

        reader = asyncio.ensure_future(read())
    publisher = await asyncio.create_subprocess_exec(sys.executable, "-m", "bench.pubsub_receive", "--publish",
                                                     str(port), channel, str(messages), str(rate))
    cpu_before = _cpu_s()
    await done
    cpu_used = _cpu_s() - cpu_before
    await publisher.wait()
    if subscription is not None:
        subscription.close()
    if reader is not None:
        reader.cancel()
    await client.aclose()
    latencies.sort()
    return cpu_used / messages * 1e6, latencies[messages // 2] * 1e3, latencies[int(messages * 0.99)] * 1e3


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--publish":
        port, channel, messages, rate = sys.argv[2:6]
        uvloop.run(_publish(int(port), channel, int(messages), float(rate)))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=6000)
    parser.add_argument("--rate", type=float, default=3000.0)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    cpu: dict[str, list[float]] = {"lean": [], "redis-py": []}
    with tempfile.TemporaryDirectory() as tmp, provide_redis(Path(tmp)) as (redis_info, _proc):
        for _ in range(args.rounds):
            for kind in ("lean", "redis-py"):
                per_message, p50, p99 = uvloop.run(_receive(redis_info.port, kind, args.messages, args.rate))
                cpu[kind].append(per_message)
                print(f"{kind:8s} {per_message:6.1f} us CPU per message, latency p50 {p50:.2f} ms, p99 {p99:.2f} ms")
    print(f"lean_vs_redis_py_cpu={statistics.median(cpu['lean']) / statistics.median(cpu['redis-py']):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
