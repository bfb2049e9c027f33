"""Hostile input at a real node (issue 13): poison JSON everywhere it is decoded, user ids, token claims, revoke,
numbers on the wire. Each test names the rule of CONTRACT section 8 it holds."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import aiohttp
import jwt
import pytest
import redis.asyncio as aioredis

from harness import RedisInfo
from tests.wsnode.conftest import (
    API_KEY,
    SECRET,
    WITH_KEY,
    Client,
    Connect,
    StartNode,
    make_token,
    push,
)

DEEP = 100_000  # levels: far beyond Python's recursion limit


def _deep_push(user: str, levels: int = DEEP) -> str:
    nested = "[" * levels + "1" + "]" * levels
    return json.dumps({"to": {"users": [user]}, "module": "m"})[:-1] + f',"data":{nested}}}'


async def _raw_http(port: int, request: bytes) -> bytes:
    """The status line of the answer to `request` (the server need not close the connection after it)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        return await asyncio.wait_for(reader.readline(), 10)
    finally:
        writer.close()


async def test_a_deeply_nested_push_body_is_400_naming_the_nesting(
        start_node: StartNode, http: aiohttp.ClientSession) -> None:
    a = start_node("node-a")
    status, answer = await push(http, a, None, raw=_deep_push("ann").encode())
    assert status == 400, answer
    assert answer["field"] == "body" and "nested deeper than" in answer["error"]
    # Nesting within the bound is still a push.
    status, answer = await push(http, a, None, raw=_deep_push("ann", levels=40).encode())
    assert status == 202, answer


async def test_a_deeply_nested_stream_entry_is_dead_lettered_and_the_consumer_goes_on(
        start_node: StartNode, connect: Connect, http: aiohttp.ClientSession, redis_server: RedisInfo,
        redis_prefix: str) -> None:
    a = start_node("node-a")
    client, _ = await connect(a, "bert")
    stream = f"{redis_prefix}wsgate:push"
    redis = aioredis.from_url(redis_server.url)
    try:
        await redis.xadd(stream, {"payload": _deep_push("bert")})
        good = {"to": {"users": ["bert"]}, "module": "after", "data": 1}
        await redis.xadd(stream, {"payload": json.dumps(good)})
        message = await client.next_of("message", timeout_s=10)
        assert (message["module"], message["data"]) == ("after", 1)
        dead = await redis.xrange(f"{stream}:dead")
        assert len(dead) == 1 and b"nested deeper than" in dead[0][1][b"error"], dead
    finally:
        await redis.aclose()
    async with http.get(f"{a.url}/health", headers=WITH_KEY) as resp:
        health = await resp.json()
    assert resp.status == 200 and health["tasks"]["stream"] == "UP", health


async def test_a_deeply_nested_client_frame_gets_an_error_frame_and_the_session_stays(
        start_node: StartNode, connect: Connect) -> None:
    a = start_node("node-a")
    client, _ = await connect(a, "cleo")
    levels = 30_000  # 60 kB: under --max-frame-bytes (64 KiB)
    await client.ws.send_str('{"type":"publish","module":"m","data":' + "[" * levels + "1" + "]" * levels + "}")
    error = await client.next_of("error")
    assert error["code"] == "too_deep" and "nested deeper than" in error["reason"]
    await client.send({"type": "ping"})
    assert await client.next_of("pong")


@pytest.mark.parametrize("path", [
    "/api/v1/users/bob%0A/presence",  # "bob\n": a regex ending in $ let it through
    "/api/v1/users/a%00b/unread",
    "/api/v1/users/a%1Bb/presence",
    "/api/v1/users/a%E2%80%A8b/presence",  # U+2028, a line separator
    "/api/v1/users/" + "x" * 129 + "/presence",
])
async def test_a_user_id_outside_the_rule_is_400_in_the_api(
        start_node: StartNode, http: aiohttp.ClientSession, path: str) -> None:
    a = start_node("node-a")
    async with http.get(f"{a.url}{path}", headers=WITH_KEY) as resp:
        answer = await resp.json()
    assert resp.status == 400 and answer["field"] == "user", answer
    status, answer = await push(http, a, {"to": {"users": ["bob\n"]}, "module": "m"})
    assert status == 400 and answer["field"] == "to.users", answer


@pytest.mark.parametrize(("claims", "reason"), [
    ({"sub": "nul\x00user", "exp": 4_000_000_000}, "token sub must be a user id"),
    ({"sub": "bob\n", "exp": 4_000_000_000}, "token sub must be a user id"),
    ({"sub": "never-expires"}, "token has no 'exp' claim"),
])
async def test_a_token_outside_the_claim_rules_is_401_at_the_handshake(
        start_node: StartNode, http: aiohttp.ClientSession, claims: dict[str, Any], reason: str) -> None:
    a = start_node("node-a")
    async with http.get(a.ws_url, params={"token": jwt.encode(claims, SECRET, algorithm="HS256")}) as resp:
        answer = await resp.json()
    assert resp.status == 401 and answer["error"].startswith(reason), answer


async def test_audience_and_issuer_are_checked_when_set(start_node: StartNode, http: aiohttp.ClientSession) -> None:
    a = start_node("node-a", "--jwt-audience", "wsgate", "--jwt-issuer", "https://idp.example")
    good = make_token("dora", aud="wsgate", iss="https://idp.example")
    for token in (make_token("dora"), make_token("dora", aud="other", iss="https://idp.example"),
                  make_token("dora", aud="wsgate", iss="https://evil.example")):
        async with http.get(a.ws_url, params={"token": token}) as resp:
            assert resp.status == 401, await resp.text()
    async with http.ws_connect(a.ws_url, params={"token": good}) as ws:
        assert (await ws.receive_json(timeout=5))["user"] == "dora"


async def test_disconnect_with_revoke_refuses_the_users_older_tokens(
        start_node: StartNode, http: aiohttp.ClientSession) -> None:
    a = start_node("node-a")
    old = make_token("eve", iat=int(time.time()) - 5)
    no_iat = make_token("eve")
    ws = await http.ws_connect(a.ws_url, params={"token": old})
    client = Client(ws)
    assert (await client.next())["type"] == "welcome"
    async with http.post(f"{a.url}/api/v1/users/eve/disconnect?revoke=true", headers=WITH_KEY) as resp:
        answer = await resp.json()
    assert resp.status == 200 and answer == {"user": "eve", "sessions": 1, "revoked": True}, answer
    assert await client.closed_with() == 1008
    for token in (old, no_iat):
        async with http.get(a.ws_url, params={"token": token}) as resp:
            assert resp.status == 401 and (await resp.json())["error"] == "token revoked"
    # A token issued after the revoke (the identity provider's next one) is accepted.
    fresh = make_token("eve", iat=int(time.time()) + 2)
    async with http.ws_connect(a.ws_url, params={"token": fresh}) as ws2:
        assert (await ws2.receive_json(timeout=5))["user"] == "eve"
    # Other users are untouched; a plain disconnect is not a ban.
    async with http.post(f"{a.url}/api/v1/users/finn/disconnect", headers=WITH_KEY) as resp:
        assert (await resp.json())["revoked"] is False
    async with http.ws_connect(a.ws_url, params={"token": make_token("finn")}) as ws3:
        assert (await ws3.receive_json(timeout=5))["user"] == "finn"
    async with http.post(f"{a.url}/api/v1/users/eve/disconnect?revoke=yes", headers=WITH_KEY) as resp:
        assert resp.status == 400 and (await resp.json())["field"] == "revoke"


@pytest.mark.parametrize("length", ["²", "1_0", "٣", "+3", "0x3", " 3 3"])
async def test_a_content_length_that_is_not_ascii_digits_is_400(start_node: StartNode, length: str) -> None:
    a = start_node("node-a")
    answer = await _raw_http(a.port, (f"POST /api/v1/push HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {API_KEY}\r\n"
                                      f"Content-Length: {length}\r\nConnection: close\r\n\r\nabc").encode())
    assert answer.split(b" ")[1] == b"400", answer


@pytest.mark.parametrize("since", ["²", "١٢", "1_0", "-1", "+1", " 1"])
async def test_a_since_that_is_not_ascii_digits_is_400(start_node: StartNode, http: aiohttp.ClientSession,
                                                       since: str) -> None:
    a = start_node("node-a")
    async with http.get(a.ws_url, params={"token": make_token("gus"), "since": since}) as resp:
        assert resp.status == 400, await resp.text()


async def test_an_idempotency_key_used_for_a_broadcast_then_for_a_user_push_is_not_a_503(
        start_node: StartNode, http: aiohttp.ClientSession) -> None:
    # Found by schemathesis: the broadcast's marker was not in the shape the push script decodes.
    a = start_node("node-a")
    for body in ({"to": {"all": True}, "module": "m"}, {"to": {"users": ["hugo"]}, "module": "m"}):
        async with http.post(f"{a.url}/api/v1/push", json=body,
                             headers={**WITH_KEY, "Idempotency-Key": "same-key"}) as resp:
            assert resp.status == 202, await resp.text()
