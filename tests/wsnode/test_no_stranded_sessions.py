"""A node catches its sessions up (issue 14): after its presence lapsed, and when a session's ids show a gap.

Real node processes and Redis; the lost publication and the lapse of presence are made in Redis directly, the way a
stalled link leaves them (tests/functional/test_fault_redis.py makes them with a fault proxy).
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator

import aiohttp
import pytest
import redis.asyncio as aioredis

from harness import RedisInfo
from tests.wsnode.conftest import Connect, StartNode, push
from wsnode.keys import Keys


@pytest.fixture
async def redis(redis_server: RedisInfo) -> AsyncIterator[aioredis.Redis]:
    """A client of the test Redis."""
    client = aioredis.from_url(redis_server.url, decode_responses=True)
    yield client
    await client.aclose()


def _body(user: str, n: int) -> dict[str, object]:
    return {"to": {"users": [user]}, "module": "m", "event": "e", "data": {"n": n}}


async def test_welcome_names_the_users_last_stored_id(start_node: StartNode, connect: Connect,
                                                      http: aiohttp.ClientSession) -> None:
    node = start_node("n1")
    _, first = await connect(node, "wl-user")
    assert first["last"] == "0"
    status, answer = await push(http, node, _body("wl-user", 1))
    assert status == 202
    _, second = await connect(node, "wl-user")
    assert second["last"] == answer["ids"]["wl-user"]


async def test_a_gap_in_a_sessions_ids_is_filled_from_the_store_in_order(
        start_node: StartNode, connect: Connect, http: aiohttp.ClientSession, redis: aioredis.Redis,
        redis_prefix: str) -> None:
    node = start_node("n1")
    client, _ = await connect(node, "gap-user")
    _, answer = await push(http, node, _body("gap-user", 1))
    first = int(answer["ids"]["gap-user"])
    assert (await client.next_of("message"))["id"] == str(first)
    # A message stored but whose publication never reached the node (as on a stalled subscription).
    base = Keys(redis_prefix).user_base("gap-user")
    missed = await redis.incr(base + ":seq")
    frame = json.dumps({"type": "message", "id": str(missed), "module": "m", "event": "e", "data": {"n": 2},
                       "ts": int(time.time() * 1000)}, separators=(",", ":"))
    await redis.zadd(base + ":msgs", {frame: missed})
    _, answer = await push(http, node, _body("gap-user", 3))
    # The node fills the gap before it sends the newer id: the client sees 2 then 3.
    received = [await client.next_of("message") for _ in range(2)]
    assert [m["id"] for m in received] == [str(missed), answer["ids"]["gap-user"]]
    assert [m["data"]["n"] for m in received] == [2, 3]


async def test_sessions_written_again_after_a_lapse_of_presence_get_what_was_stored_meanwhile(
        start_node: StartNode, connect: Connect, http: aiohttp.ClientSession, redis: aioredis.Redis,
        redis_prefix: str) -> None:
    node = start_node("n1")
    client, _ = await connect(node, "lapse-user")
    alive = Keys(redis_prefix).node_alive("n1")
    # The node's presence lapses (its key expired while its refreshes were late): a push is stored for nobody.
    deadline = time.monotonic() + 10
    while True:
        await redis.delete(alive)
        status, answer = await push(http, node, _body("lapse-user", 1))
        assert status == 202
        if answer["online_sessions"] == 0:
            break  # otherwise the node's refresh came in between: try again
        assert (await client.next_of("message"))["data"]["n"] == 1
        assert time.monotonic() < deadline, "could not make the node's presence lapse"
    # The next refresh finds the key missing, writes the sessions again and resends from the store.
    message = await client.next_of("message", timeout_s=10)
    assert message["id"] == answer["ids"]["lapse-user"]
