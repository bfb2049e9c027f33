"""Per-user limits across nodes (CONTRACT section 8): sessions per user, the publish budget shared by all of a
user's sessions, and the publish stream bounded by bytes; every refusal is counted in /metrics."""

from __future__ import annotations

import re

import aiohttp
import redis.asyncio as aioredis

from harness import RedisInfo
from tests.wsnode.conftest import WITH_KEY, Client, Connect, NodeProc, StartNode, eventually


async def _refusals(http: aiohttp.ClientSession, node: NodeProc, reason: str) -> float:
    async with http.get(f"{node.url}/metrics", headers=WITH_KEY) as resp:
        text = await resp.text()
    found = re.search(r'^wsnode_refusals_total\{reason="' + reason + r'"\} (\S+)$', text, re.M)
    return float(found.group(1)) if found else 0.0


async def test_a_session_over_the_per_user_limit_closes_the_oldest_with_1008_across_nodes(
        start_node: StartNode, connect: Connect, http: aiohttp.ClientSession) -> None:
    a = start_node("node-a", "--max-sessions-per-user", "2")
    b = start_node("node-b", "--max-sessions-per-user", "2")
    first, _ = await connect(b, "hank")
    second, _ = await connect(a, "hank")
    other, _ = await connect(b, "ivy")  # another user's sessions do not count
    third, _ = await connect(a, "hank")
    assert await first.closed_with(timeout_s=10) == 1008
    for client in (second, third, other):
        await client.send({"type": "ping"})
        assert await client.next_of("pong")
    assert await _refusals(http, a, "sessions_per_user") == 1.0

    async def two_left() -> bool:
        async with http.get(f"{a.url}/api/v1/users/hank/presence", headers=WITH_KEY) as resp:
            return len((await resp.json())["sessions"]) == 2

    await eventually(two_left)


async def _publish_all(clients: list[Client], frames: int, data: str) -> tuple[int, dict[str, int]]:
    """Each client publishes `frames` frames at once; (accepted, refusals by code)."""
    for client in clients:
        for n in range(frames):
            await client.send({"type": "publish", "module": "chat", "data": data, "ref": n})
    accepted, refused = 0, {}
    for client in clients:
        for _ in range(frames):
            while True:
                frame = await client.next(timeout_s=10)
                if frame["type"] == "accepted":
                    accepted += 1
                    break
                if frame["type"] == "error":
                    refused[frame["code"]] = refused.get(frame["code"], 0) + 1
                    break
    return accepted, refused


async def test_the_publish_frame_budget_is_shared_by_all_sessions_of_a_user_on_every_node(
        start_node: StartNode, connect: Connect, http: aiohttp.ClientSession, redis_server: RedisInfo,
        redis_prefix: str) -> None:
    # One frame per ten seconds: whatever the machine's load, the test's frames come well within one refill.
    a = start_node("node-a", "--publish-rate", "0.1")
    b = start_node("node-b", "--publish-rate", "0.1")
    on_a, _ = await connect(a, "jack")
    on_b, _ = await connect(b, "jack")
    accepted, refused = await _publish_all([on_a, on_b], 2, "x")
    assert (accepted, refused) == (1, {"publish_rate": 3})
    # Another user has a budget of their own.
    kim, _ = await connect(b, "kim")
    assert await _publish_all([kim], 1, "x") == (1, {})
    redis = aioredis.from_url(redis_server.url)
    try:
        assert await redis.xlen(f"{redis_prefix}wsgate:publish") == 2
    finally:
        await redis.aclose()
    assert await _refusals(http, a, "publish_rate") + await _refusals(http, b, "publish_rate") == 3.0


async def test_the_publish_byte_budget_is_shared_by_all_sessions_of_a_user(
        start_node: StartNode, connect: Connect, http: aiohttp.ClientSession) -> None:
    args = ("--publish-rate", "1000", "--publish-bytes-rate", "2048", "--max-frame-bytes", "2048")
    a = start_node("node-a", *args)
    b = start_node("node-b", *args)
    on_a, _ = await connect(a, "lou")
    on_b, _ = await connect(b, "lou")
    # 2 x 10 frames of about 1 kB against 2 kB per second (two frames at once, two more each second): at least 8
    # are refused unless handling the 20 frames took over 4 s.
    accepted, refused = await _publish_all([on_a, on_b], 10, "y" * 900)
    assert accepted >= 2 and refused.get("publish_bytes_rate", 0) >= 8, (accepted, refused)
    assert accepted + refused["publish_bytes_rate"] == 20
    counted = await _refusals(http, a, "publish_bytes_rate") + await _refusals(http, b, "publish_bytes_rate")
    assert counted == refused["publish_bytes_rate"]


async def test_the_publish_stream_is_bounded_by_bytes(
        start_node: StartNode, connect: Connect, redis_server: RedisInfo, redis_prefix: str) -> None:
    a = start_node("node-a", "--publish-stream-max-bytes", "20000", "--max-frame-bytes", "8192",
                   "--publish-bytes-rate", "1000000", "--publish-rate", "1000")
    client, _ = await connect(a, "max")
    accepted, refused = await _publish_all([client], 12, "z" * 4000)
    assert (accepted, refused) == (12, {})
    stream = f"{redis_prefix}wsgate:publish"
    redis = aioredis.from_url(redis_server.url)
    try:
        entries = await redis.xrange(stream)
        held = sum(len(k) + len(v) for _, fields in entries for k, v in fields.items())
        assert held <= 20000 and len(entries) == 4, (held, len(entries))
        assert [int(fields[b"ref"]) for _, fields in entries] == [8, 9, 10, 11]  # the newest stay
        assert int(await redis.get(f"{stream}:bytes") or 0) == held
    finally:
        await redis.aclose()
