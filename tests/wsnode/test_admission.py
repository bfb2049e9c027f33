"""A connect's Redis work in one script call (wsnode/admission.py, wsnode/lua/connect.lua).

The replay it reads must equal MessageStore.replay's and the records it writes SessionRegistry.add's, for every state
of a user's store; its revocation check must decide as Node.admit does. Each test that runs Redis runs its own
redis-server (conftest.own_redis). The cost of a whole connect at a real node is counted in
test_connect_cost.py.
"""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest
import redis.asyncio as aioredis

from harness import RedisInfo
from tests.wsnode.conftest import WITH_KEY, StartNode, make_token
from wsnode.admission import Admission, Admitter, admission_of
from wsnode.envelope import PushRequest
from wsnode.keys import Keys
from wsnode.presence import SessionRegistry, as_shards
from wsnode.store import MessageStore, Replay, replay_of

FRAMES = [(5, "f5"), (6, "f6"), (7, "f7")]


@pytest.mark.parametrize(("since", "position", "frames", "expected"), [
    # No since: whatever unacked frames were read, nothing to recover.
    (None, 7, FRAMES, Replay(FRAMES, {"m": 1}, None, 7)),
    (None, 0, [], Replay([], {"m": 1}, None, 0)),
    # Every id after since still held (the oldest read is since + 1), or nothing new since.
    (4, 7, FRAMES, Replay(FRAMES, {"m": 1}, True, 7)),
    (7, 7, [], Replay([], {"m": 1}, True, 7)),
    # Trimmed: the oldest read is beyond since + 1; or nothing held although ids were given out after since.
    (2, 7, FRAMES, Replay(FRAMES, {"m": 1}, False, 7)),
    (3, 7, [], Replay([], {"m": 1}, False, 7)),
    # An id this store never gave out (it lost its data): start afresh, whatever was read.
    (9, 7, FRAMES, Replay([], {"m": 1}, False, 7)),
    (1, 0, [], Replay([], {"m": 1}, False, 0)),
])
def test_replay_of(since: int | None, position: int, frames: list[tuple[int, str]], expected: Replay) -> None:
    assert replay_of(since, position, list(frames), {"m": 1}) == expected


@pytest.mark.parametrize(("reply", "since", "expected"), [
    ([0], None, None),
    ([1, 0, None, [], []], None, Admission(0, Replay([], {}, None, 0))),
    ([1, 3, b"7", [b"f6", b"6", b"f7", b"7"], [b"m", b"2", b"gone", b"0"]], 5,
     Admission(3, Replay([(6, "f6"), (7, "f7")], {"m": 2}, True, 7))),
    (["1", "2", "1733400000123", ["f", "1733400000123"], []], None,
     Admission(2, Replay([(1733400000123, "f")], {}, None, 1733400000123))),
])
def test_admission_of(reply: list[object], since: int | None, expected: Admission | None) -> None:
    assert admission_of(reply, since) == expected


async def _store(client: aioredis.Redis, keys: Keys) -> MessageStore:
    return MessageStore(client, keys, max_count=100, max_age_s=3600)


async def _push(store: MessageStore, user: str, module: str, n: int) -> str:
    result = await store.push_to_users(PushRequest(module=module, event="e", data_json=str(n), users=(user,)),
                                       push_id=f"p{n}", ts_ms=int(time.time() * 1000))
    return result.ids[user]


@pytest.mark.parametrize("since_kind", ["none", "first", "last", "beyond", "before"])
async def test_the_script_reads_what_store_replay_reads_and_writes_what_registry_add_writes(
        own_redis: aioredis.Redis, since_kind: str) -> None:
    keys = Keys("adm:")
    store = await _store(own_redis, keys)
    ids = [int(await _push(store, "ann", "chat" if n % 2 else "news", n)) for n in range(4)]
    assert await store.ack("ann", str(ids[1])) is not None  # one read: replays without since leave it out
    since = {"none": None, "first": ids[0], "last": ids[-1], "beyond": ids[-1] + 5, "before": ids[0] - 1}[since_kind]
    expected = await store.replay("ann", since)
    admitter = Admitter(as_shards(own_redis), keys, node_id="node-a")
    admission = await admitter.open("s1", "ann", since=since, check=True, issued_at=None)
    assert admission is not None and admission.held == 0
    assert admission.replay == expected
    # The records SessionRegistry.add writes, nothing else (the start time aside).
    registry = SessionRegistry(own_redis, keys, node_id="node-a", ttl_s=30)
    await registry.add("s2", "ann")
    sessions = await own_redis.zrange(keys.user_sessions("ann"), 0, -1, withscores=True)
    assert [member for member, _ in sessions] == ["node-a|s1", "node-a|s2"]
    assert sorted(await own_redis.zrange(keys.all_sessions, 0, -1)) == ["s1", "s2"]
    assert await own_redis.hgetall(keys.node_sessions("node-a")) == {"s1": "ann", "s2": "ann"}
    assert abs(sessions[0][1] - time.time() * 1000) < 60_000
    # The next session counts the two before it.
    again = await admitter.open("s3", "ann", since=None, check=True, issued_at=None)
    assert again is not None and again.held == 2


NOW = 1_800_000_000


@pytest.mark.parametrize(("revoked", "issued_at", "check", "admitted"), [
    (None, None, True, True),
    (None, NOW - 10.0, True, True),
    (NOW, None, True, False),  # a token without iat is covered by any revocation
    (NOW, NOW - 1.0, True, False),
    (NOW, NOW - 0.5, True, False),
    (NOW, float(NOW), True, True),  # issued within the revocation's second, after it: accepted (as Node.admit)
    (NOW, NOW + 1.0, True, True),
    ("garbage", NOW + 1.0, True, False),  # fail closed on a value that is no time
    (NOW, None, False, True),  # anonymous users are not checked (nor counted)
])
async def test_the_revocation_check_decides_as_node_admit_did(
        own_redis: aioredis.Redis, revoked: object, issued_at: float | None, check: bool, admitted: bool) -> None:
    keys = Keys("rev:")
    if revoked is not None:
        await own_redis.set(keys.user_revoked("bo"), str(revoked))
    await own_redis.zadd(keys.user_sessions("bo"), {"other|old": 1})
    admitter = Admitter(as_shards(own_redis), keys, node_id="node-a")
    admission = await admitter.open("s1", "bo", since=None, check=check, issued_at=issued_at)
    assert (admission is not None) == admitted
    members = await own_redis.zrange(keys.user_sessions("bo"), 0, -1)
    if admitted:
        assert admission is not None and admission.held == (1 if check else 0)
        assert members == ["other|old", "node-a|s1"]
    else:
        # Refused before anything was written.
        assert members == ["other|old"]
        assert not await own_redis.exists(keys.all_sessions, keys.node_sessions("node-a"))


async def test_concurrent_connects_each_get_their_own_answer(
        own_redis: aioredis.Redis) -> None:
    keys = Keys("many:")
    store = await _store(own_redis, keys)
    await _push(store, "u3", "chat", 1)
    await own_redis.set(keys.user_revoked("u4"), str(NOW))
    admitter = Admitter(as_shards(own_redis), keys, node_id="node-a")
    answers = await asyncio.gather(*(admitter.open(f"s{i}", f"u{i}", since=None, check=True, issued_at=None)
                                     for i in range(6)))
    assert [a is not None for a in answers] == [True, True, True, True, False, True]
    assert [len(a.replay.frames) for a in answers if a is not None] == [0, 0, 0, 1, 0]
    assert await own_redis.hlen(keys.node_sessions("node-a")) == 5


async def test_a_node_refuses_a_revoked_token_on_a_real_upgrade_request_and_registers_nothing(
        start_node: StartNode, http: aiohttp.ClientSession, redis_server: RedisInfo, redis_prefix: str) -> None:
    node = start_node("node-a")
    async with http.post(f"{node.url}/api/v1/users/rita/disconnect?revoke=true", headers=WITH_KEY) as resp:
        assert resp.status == 200
    # An upgrade request that passes every other check: the refusal comes from the connect script.
    upgrade = {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
               "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}
    async with http.get(node.ws_url, params={"token": make_token("rita", iat=1)}, headers=upgrade) as resp:
        assert resp.status == 401 and (await resp.json())["error"] == "token revoked"
    client = aioredis.from_url(redis_server.url)
    try:
        assert await client.zcard(Keys(redis_prefix).user_sessions("rita")) == 0
        assert await client.hlen(Keys(redis_prefix).node_sessions("node-a")) == 0
    finally:
        await client.aclose()
