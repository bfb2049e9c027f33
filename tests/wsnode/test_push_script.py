"""push.lua against the real Redis: what it publishes decodes (nodemsg.decode) to the stored frame and counts, for
any content, and trimming by count and by age keeps the store, unacked ids and unread counts in step.

The script reads a stored frame's id and time by pattern instead of decoding it, and drops many frames with a few
commands: these tests hold those shortcuts to what the Python side writes and reads (and pass on the script before).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from harness import RedisInfo
from wsnode import nodemsg
from wsnode.envelope import PushRequest, encode_message, message_tail
from wsnode.keys import Keys
from wsnode.store import MessageStore

WEEK_S = 7 * 24 * 3600.0


@pytest.fixture
async def client(redis_server: RedisInfo) -> AsyncIterator[aioredis.Redis]:
    conn = aioredis.Redis(host=redis_server.host, port=redis_server.port)
    yield conn
    await conn.aclose()


async def _online(client: aioredis.Redis, keys: Keys, user: str, *nodes: str, dead: str = "") -> None:
    for n, node in enumerate((*nodes, *([dead] if dead else []))):
        await client.zadd(keys.user_sessions(user), {f"{node}|s{n}": n})
    for node in nodes:
        await client.set(keys.node_alive(node), "1")


CONTENT = [
    # (module, user, data JSON)
    ("notice", "olga", '{"text":"plain"}'),
    ('quo"te\\mod', 'us"er\\1', '{"a":"\\"quoted\\" \\\\ back/slash","b":[1,2.5,null,true]}'),
    ("modül", "ölga", '{"t":"été 🎉 \\u0001 \\u2028 </script>"}'),
    ("notice", "olga", '{"ts":99999999999999,"nested":{"ts":1}}'),  # a "ts" of the data is not the frame's time
    ("notice", "olga", '"just a string with \\"ts\\":1}"'),
    ("notice", "olga", "[]"),
]


@pytest.mark.parametrize(("module", "user", "data_json"), CONTENT)
async def test_push_publishes_what_the_codec_decodes_to_the_stored_frame(
        client: aioredis.Redis, redis_prefix: str, module: str, user: str, data_json: str) -> None:
    keys = Keys(prefix=redis_prefix)
    store = MessageStore(client, keys, max_count=10, max_age_s=WEEK_S)
    await _online(client, keys, user, "node-a", "node-b", dead="node-c")
    pubsub = client.pubsub()
    await pubsub.subscribe(*(keys.node_channel(n) for n in ("node-a", "node-b", "node-c")))
    await pubsub.get_message(timeout=1.0)  # the subscribe confirmations
    await pubsub.get_message(timeout=1.0)
    await pubsub.get_message(timeout=1.0)
    ts_ms = int(time.time() * 1000)
    result = await store.push_to_users(PushRequest(module=module, event="ev\"ent", data_json=data_json,
                                                   users=(user,)), push_id="p/1\"x", ts_ms=ts_ms)
    assert result.stored == 1 and result.online_sessions == 2
    ident = result.ids[user]
    tail = message_tail(module=module, event="ev\"ent", data_json=data_json, ts_ms=ts_ms)
    stored = await client.zrange(keys.user_base(user) + ":msgs", 0, -1)
    assert [m.decode() for m in stored] == [encode_message(ident, tail)]
    expected = nodemsg.Push("p/1\"x", tail, (nodemsg.Delivery(user, int(ident), encode_message(ident, tail),
                                                              {module: 1}),))
    got: dict[str, nodemsg.NodeMessage] = {}
    while len(got) < 2:
        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=5.0)
        assert message is not None, got
        got[message["channel"].decode()] = nodemsg.decode(message["data"])
    assert got == {keys.node_channel("node-a"): expected, keys.node_channel("node-b"): expected}
    assert json.loads(json.loads(message["data"])["d"][0]["f"]) == json.loads(encode_message(ident, tail))
    # Not stored: the delivery carries the user's current id and neither frame nor counts.
    await store.push_to_users(PushRequest(module=module, event="e", data_json=data_json, users=(user,), store=False),
                              push_id="p2", ts_ms=ts_ms)
    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=5.0)
    assert message is not None
    assert nodemsg.decode(message["data"]) == nodemsg.Push(
        "p2", message_tail(module=module, event="e", data_json=data_json, ts_ms=ts_ms),
        (nodemsg.Delivery(user, int(ident)),))
    await pubsub.aclose()


async def _state(client: aioredis.Redis, keys: Keys, user: str) -> tuple[list[int], set[int], dict[str, int]]:
    base = keys.user_base(user)
    ids = [int(score) for _, score in await client.zrange(base + ":msgs", 0, -1, withscores=True)]
    unacked = {int(k) for k in await client.hkeys(base + ":unacked")}
    unread = {k.decode(): int(v) for k, v in (await client.hgetall(base + ":unread")).items()}
    return ids, unacked, unread


async def test_count_trim_drops_the_oldest_with_their_unacked_ids_and_counts(
        client: aioredis.Redis, redis_prefix: str) -> None:
    keys = Keys(prefix=redis_prefix)
    store = MessageStore(client, keys, max_count=3, max_age_s=WEEK_S)
    ts_ms = int(time.time() * 1000)
    modules = ["a", "b", "a", "c", "b", "b"]
    ids = []
    for n, module in enumerate(modules):
        result = await store.push_to_users(PushRequest(module=module, event="e", data_json=str(n), users=("u",)),
                                           push_id=f"p{n}", ts_ms=ts_ms)
        ids.append(int(result.ids["u"]))
    assert ids == list(range(ids[0], ids[0] + 6))
    held, unacked, unread = await _state(client, keys, "u")
    assert held == ids[3:] and unacked == set(ids[3:]) and unread == {"c": 1, "b": 2}
    # An acked message dropped by the trim lowers no count a second time.
    assert await store.ack("u", str(ids[3])) == {"b": 2}
    await store.push_to_users(PushRequest(module="a", event="e", data_json="6", users=("u",)), push_id="p6",
                              ts_ms=ts_ms)
    held, unacked, unread = await _state(client, keys, "u")
    assert held == [ids[4], ids[5], ids[5] + 1] and unacked == set(held) and unread == {"b": 2, "a": 1}
    assert await store.unread("u") == {"b": 2, "a": 1}


# Not full; full after the last push; one over the count after it (the count and the age both trim).
@pytest.mark.parametrize("max_count", [100, 72, 71])
async def test_age_trim_reads_the_frame_time_not_a_time_in_the_data(
        client: aioredis.Redis, redis_prefix: str, max_count: int) -> None:
    keys = Keys(prefix=redis_prefix)
    keep_long = MessageStore(client, keys, max_count=max_count, max_age_s=WEEK_S)
    now_ms = int(time.time() * 1000)
    old = []
    for n in range(70):  # more than the script reads at once, so it reads further
        data = json.dumps({"ts": now_ms + 10**9})  # a data "ts" that would keep the frame if it were read
        result = await keep_long.push_to_users(PushRequest(module=f"m{n % 2}", event="e", data_json=data,
                                                           users=("u",)), push_id=f"o{n}", ts_ms=now_ms - 60_000)
        old.append(int(result.ids["u"]))
    young = await keep_long.push_to_users(PushRequest(module="m0", event="e", data_json='{"ts":0}', users=("u",)),
                                          push_id="y0", ts_ms=now_ms - 1_000)
    assert (await _state(client, keys, "u"))[2] == {"m0": 36, "m1": 35}
    keep_short = MessageStore(client, keys, max_count=max_count, max_age_s=30.0)
    fresh = await keep_short.push_to_users(PushRequest(module="m1", event="e", data_json="1", users=("u",)),
                                           push_id="f", ts_ms=now_ms)
    held, unacked, unread = await _state(client, keys, "u")
    expected = [int(young.ids["u"]), int(fresh.ids["u"])]
    assert held == expected and unacked == set(expected) and unread == {"m0": 1, "m1": 1}
    # The store's keys now live as long as the shorter max age.
    assert 0 < await client.pttl(keys.user_base("u") + ":unread") <= 30_000


async def test_a_retry_with_the_same_key_stores_once(client: aioredis.Redis, redis_prefix: str) -> None:
    keys = Keys(prefix=redis_prefix)
    store = MessageStore(client, keys, max_count=10, max_age_s=WEEK_S)
    request = PushRequest(module="m", event="e", data_json="1", users=("u", "v"))
    first = await store.push_to_users(request, push_id="p1", ts_ms=int(time.time() * 1000), dedupe_key="k")
    again = await asyncio.gather(*(store.push_to_users(request, push_id=f"p{n}", ts_ms=1, dedupe_key="k")
                                   for n in range(2, 5)))
    assert all(r == first for r in again) and first.stored == 2
    assert (await _state(client, keys, "u"))[0] == [int(first.ids["u"])]
    assert await store.unread("v") == {"m": 1}

