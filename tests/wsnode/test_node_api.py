"""Functional tests of the node with real processes and real Redis: endpoint, auth, push API, cross-node delivery."""

from __future__ import annotations

import json
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis

from harness import RedisInfo
from tests.wsnode.conftest import (
    API_KEY_2,
    WITH_KEY,
    Connect,
    StartNode,
    api_get,
    eventually,
    make_token,
    push,
)


async def test_push_accepted_by_node_a_reaches_sessions_on_a_and_b(
        start_node: StartNode, connect: Connect, http: aiohttp.ClientSession) -> None:
    a, b = start_node("node-a"), start_node("node-b")
    on_a, welcome_a = await connect(a, "alice")
    on_b, welcome_b = await connect(b, "alice")
    other, _ = await connect(b, "bob")
    assert (welcome_a["node"], welcome_b["node"]) == ("node-a", "node-b")
    assert welcome_a["user"] == "alice" and welcome_a["session"] != welcome_b["session"]
    status, body = await push(http, a, {"to": {"users": ["alice"]}, "module": "notice", "event": "created",
                                        "data": {"n": 1}})
    assert status == 202, body
    assert body["online_sessions"] == 2 and body["stored"] == 1
    for client in (on_a, on_b):
        message = await client.next_of("message")
        assert {k: message[k] for k in ("id", "module", "event", "data")} == {
            "id": body["ids"]["alice"], "module": "notice", "event": "created", "data": {"n": 1}}
        assert isinstance(message["ts"], int)
        assert (await client.next_of("unread"))["unread"] == {"notice": 1}
    await other.send({"type": "ping"})
    assert await other.next() == {"type": "pong"}  # bob got nothing before his pong


async def test_broadcast_reaches_every_session_on_every_node(
        start_node: StartNode, connect: Connect, http: aiohttp.ClientSession) -> None:
    a, b = start_node("node-a"), start_node("node-b")
    clients = [(await connect(node, user))[0] for node, user in ((a, "u1"), (b, "u2"), (b, "u3"))]
    status, body = await push(http, b, {"to": {"all": True}, "module": "system", "event": "maintenance",
                                        "data": "soon"})
    assert status == 202 and body["stored"] == 0 and body["online_sessions"] == 3
    for client in clients:
        message = await client.next_of("message")
        assert (message["module"], message["data"]) == ("system", "soon")


async def test_presence_follows_connects_and_disconnects(
        start_node: StartNode, connect: Connect, http: aiohttp.ClientSession) -> None:
    a, b = start_node("node-a"), start_node("node-b")
    first, w1 = await connect(a, "carol")
    _, w2 = await connect(b, "carol")
    status, body = await api_get(http, b, "/api/v1/users/carol/presence")
    assert status == 200 and body["online"] is True
    assert sorted((s["session"], s["node"]) for s in body["sessions"]) == sorted(
        [(w1["session"], "node-a"), (w2["session"], "node-b")])
    await first.ws.close()

    async def one_left() -> bool:
        _, now = await api_get(http, a, "/api/v1/users/carol/presence")
        return [s["session"] for s in now["sessions"]] == [w2["session"]]

    await eventually(one_left)
    _, nobody = await api_get(http, a, "/api/v1/users/nobody/presence")
    assert nobody == {"user": "nobody", "online": False, "sessions": []}


async def test_push_through_the_redis_stream_arrives(
        start_node: StartNode, connect: Connect, redis_server: RedisInfo, redis_prefix: str) -> None:
    a = start_node("node-a")
    client, _ = await connect(a, "dave")
    body = {"to": {"users": ["dave"]}, "module": "orders", "event": "shipped", "data": {"order": 7}}
    redis = aioredis.from_url(redis_server.url)
    try:
        await redis.xadd(f"{redis_prefix}wsgate:push", {"payload": json.dumps(body)})
        message = await client.next_of("message")
        assert (message["module"], message["event"], message["data"]) == ("orders", "shipped", {"order": 7})

        async def acked() -> bool:
            groups = await redis.xinfo_groups(f"{redis_prefix}wsgate:push")
            return bool(groups) and groups[0]["pending"] == 0

        await eventually(acked)
    finally:
        await redis.aclose()


@pytest.mark.parametrize(("headers", "status"), [
    ({}, 401),
    ({"Authorization": "Bearer wrong"}, 401),
    ({"Authorization": "Basic a2V5LW9uZQ=="}, 401),
    ({"Authorization": f"Bearer {API_KEY_2}"}, 202),
])
async def test_push_api_key_is_required(start_node: StartNode, http: aiohttp.ClientSession,
                                        headers: dict[str, str], status: int) -> None:
    a = start_node("node-a")
    body = {"to": {"users": ["u"]}, "module": "m"}
    async with http.post(f"{a.url}/api/v1/push", json=body, headers=headers) as resp:
        assert resp.status == status


@pytest.mark.parametrize(("raw", "field"), [
    (b"{not json", "body"),
    (b"[]", "body"),
    (b'{"module":"m"}', "to"),
    (b'{"to":{"users":[]},"module":"m"}', "to.users"),
    (b'{"to":{"users":["a b"]},"module":"m"}', "to.users"),
    (b'{"to":{"all":false},"module":"m"}', "to.all"),
    (b'{"to":{"users":["u"]}}', "module"),
    (b'{"to":{"users":["u"]},"module":"m","store":"yes"}', "store"),
    (b'{"to":{"users":["u"]},"module":"m","event":5}', "event"),
])
async def test_push_api_bad_body_is_400_naming_the_field(start_node: StartNode, http: aiohttp.ClientSession,
                                                          raw: bytes, field: str) -> None:
    a = start_node("node-a")
    status, body = await push(http, a, None, raw=raw)
    assert status == 400 and body["field"] == field, body


@pytest.mark.parametrize(("query", "headers", "status"), [
    ({}, {}, 401),
    ({"token": "garbage"}, {}, 401),
    ({"token": make_token("u", secret="other-secret-0123456789-abcdefghij")}, {}, 401),
    ({"token": make_token("u", exp_in_s=-60)}, {}, 401),
    ({"token": make_token("u")}, {"Origin": "https://evil.example"}, 403),
    ({"token": make_token("u"), "since": "abc"}, {}, 400),
])
async def test_handshake_refused_before_upgrade(start_node: StartNode, http: aiohttp.ClientSession,
                                                query: dict[str, str], headers: dict[str, str],
                                                status: int) -> None:
    a = start_node("node-a", "--allowed-origins", "https://app.example")
    with pytest.raises(aiohttp.WSServerHandshakeError) as info:
        await http.ws_connect(a.ws_url, params=query, headers=headers)
    assert info.value.status == status


async def test_handshake_accepts_bearer_header_and_allowed_origin(
        start_node: StartNode, http: aiohttp.ClientSession) -> None:
    a = start_node("node-a", "--allowed-origins", "https://app.example")
    headers = {"Authorization": f"Bearer {make_token('erin')}", "Origin": "https://APP.example:443"}
    async with http.ws_connect(a.ws_url, headers=headers) as ws:
        welcome: dict[str, Any] = json.loads((await ws.receive(timeout=5)).data)
        assert welcome["type"] == "welcome" and welcome["user"] == "erin"


async def test_bad_client_frames_get_errors_and_the_connection_stays_open(
        start_node: StartNode, connect: Connect) -> None:
    a = start_node("node-a")
    client, _ = await connect(a, "frank")
    for raw, code in (("nope", "bad_json"), ("[1]", "bad_frame"), ('{"type":"dance"}', "unknown_type"),
                      ('{"type":"ack"}', "bad_frame")):
        await client.ws.send_str(raw)
        error = await client.next()
        assert (error["type"], error["code"]) == ("error", code)
    await client.send({"type": "ping"})
    assert await client.next() == {"type": "pong"}


async def test_publish_goes_to_the_publish_stream_and_is_accepted(
        start_node: StartNode, connect: Connect, redis_server: RedisInfo, redis_prefix: str) -> None:
    a = start_node("node-a")
    client, welcome = await connect(a, "gina")
    await client.send({"type": "publish", "module": "chat", "data": {"text": "hi"}, "ref": 42})
    assert await client.next() == {"type": "accepted", "ref": 42}
    redis = aioredis.from_url(redis_server.url, decode_responses=True)
    try:
        entries = await redis.xrange(f"{redis_prefix}wsgate:publish")
    finally:
        await redis.aclose()
    assert len(entries) == 1
    fields = entries[0][1]
    assert (fields["user"], fields["session"], fields["module"], json.loads(fields["data"])) == (
        "gina", welcome["session"], "chat", {"text": "hi"})


async def test_oversized_frame_closes_1009_and_flood_closes_1008(start_node: StartNode, connect: Connect) -> None:
    a = start_node("node-a", "--max-frame-bytes", "1024", "--client-rate", "1", "--client-burst", "5")
    big, _ = await connect(a, "hank")
    await big.ws.send_str("x" * 2048)
    assert await big.closed_with() == 1009
    flood, _ = await connect(a, "ivy")
    for _ in range(10):
        await flood.send({"type": "ping"})
    assert await flood.closed_with() == 1008


async def test_health_and_metrics_and_openapi(start_node: StartNode, http: aiohttp.ClientSession) -> None:
    a = start_node("node-a")
    async with http.get(f"{a.url}/health", headers=WITH_KEY) as resp:
        health = await resp.json()
        assert resp.status == 200 and health["status"] == "UP" and health["node"] == "node-a"
    async with http.get(f"{a.url}/metrics", headers=WITH_KEY) as resp:
        assert resp.status == 200 and "wsnode_sessions" in await resp.text()
    async with http.get(f"{a.url}/api/v1/openapi.json") as resp:
        doc = await resp.json()
        assert doc["openapi"].startswith("3.") and "/api/v1/push" in doc["paths"]
    status, stats = await api_get(http, a, "/api/v1/stats")
    assert status == 200 and stats["node"] == "node-a" and stats["nodes"] >= 1


async def test_pending_stream_entries_of_a_dead_consumer_are_claimed_and_delivered(
        start_node: StartNode, connect: Connect, redis_server: RedisInfo, redis_prefix: str) -> None:
    stream = f"{redis_prefix}wsgate:push"
    redis = aioredis.from_url(redis_server.url)
    try:
        await redis.xgroup_create(stream, "wsnode", id="0", mkstream=True)
        body = {"to": {"users": ["lena"]}, "module": "jobs", "event": "done", "data": 1}
        await redis.xadd(stream, {"payload": json.dumps(body)})
        await redis.xadd(stream, {"payload": "not json"})
        # A consumer reads both entries and dies before acknowledging them.
        taken = await redis.xreadgroup("wsnode", "dead-consumer", {stream: ">"}, count=10)
        assert len(taken[0][1]) == 2
        a = start_node("node-a")
        client, _ = await connect(a, "lena")  # claimed before or after the connect: replayed or live
        message = await client.next_of("message")
        assert (message["module"], message["data"]) == ("jobs", 1)

        async def nothing_pending() -> bool:
            groups = await redis.xinfo_groups(stream)
            return groups[0]["pending"] == 0

        await eventually(nothing_pending, timeout_s=8)
        dead = await redis.xrange(f"{stream}:dead")
        assert len(dead) == 1 and b"JSON" in dead[0][1][b"error"] and dead[0][1][b"payload"] == b"not json"
    finally:
        await redis.aclose()


async def test_browser_client_is_served(start_node: StartNode, http: aiohttp.ClientSession) -> None:
    a = start_node("node-a")
    async with http.get(f"{a.url}/static/wsgate.js") as resp:
        assert resp.status == 200 and "class WsGate" in await resp.text()


async def test_a_push_is_published_only_to_nodes_holding_the_users_sessions(
        start_node: StartNode, connect: Connect, http: aiohttp.ClientSession, redis_server: RedisInfo,
        redis_prefix: str) -> None:
    a, b = start_node("node-a"), start_node("node-b")
    await connect(a, "only-on-a")
    await connect(b, "on-b")
    redis = aioredis.from_url(redis_server.url, decode_responses=True)
    pubsub = redis.pubsub()
    try:
        await pubsub.subscribe(f"{redis_prefix}wsgate:node:node-b")
        confirmed = await pubsub.get_message(timeout=5)  # listening before anything is pushed
        assert confirmed is not None and confirmed["type"] == "subscribe"
        await push(http, a, {"to": {"users": ["only-on-a"]}, "module": "m", "data": "not for b"})
        await push(http, a, {"to": {"users": ["on-b"]}, "module": "m", "data": "sentinel"})
        first = None
        while first is None:
            first = await pubsub.get_message(timeout=5)
        payload = json.loads(first["data"])
        assert [d["u"] for d in payload["d"]] == ["on-b"]  # node-b never heard of the first push
    finally:
        await pubsub.aclose()
        await redis.aclose()


async def test_a_malformed_node_message_is_skipped_and_the_subscription_goes_on(
        start_node: StartNode, connect: Connect, http: aiohttp.ClientSession, redis_server: RedisInfo,
        redis_prefix: str) -> None:
    a = start_node("node-a")
    client, _ = await connect(a, "ava")
    redis = aioredis.from_url(redis_server.url, decode_responses=True)
    try:
        for bad in ("not json", "[1]", '{"k":"push","p":"p","t":"t","d":[{"u":"ava"}]}', '{"k":"reboot"}',
                    '{"k":"evict","u":"ava","s":"all"}', "[" * 100_000):
            assert await redis.publish(f"{redis_prefix}wsgate:node:node-a", bad) == 1
    finally:
        await redis.aclose()
    status, body = await push(http, a, {"to": {"users": ["ava"]}, "module": "m", "data": "after"})
    assert status == 202 and body["online_sessions"] == 1, body
    assert (await client.next_of("message"))["data"] == "after"
