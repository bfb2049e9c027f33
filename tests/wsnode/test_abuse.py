"""A node under abuse, over real processes: forged tokens, broken frames, slow readers, foreign modules and users.

Already covered elsewhere and not repeated here: bad/expired HS256 tokens and forbidden origins at the handshake,
1009 and 1008 (test_node_api.py), 4008 (test_node_lifecycle.py), `none` and HS/RS confusion in the pure verifier
(test_auth.py).
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import struct
import time
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest
import redis.asyncio as aioredis
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from harness import RedisInfo
from tests.wsnode.conftest import (
    API_KEY,
    SECRET,
    WITH_KEY,
    Connect,
    StartNode,
    api_get,
    eventually,
    make_token,
    push,
)

OP_TEXT, OP_BINARY, OP_CLOSE = 0x1, 0x2, 0x8


def _b64(obj: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()


def _rsa_pems() -> tuple[str, str]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
    public = key.public_key().public_bytes(serialization.Encoding.PEM,
                                           serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    return private, public


def _hs256_with(key: bytes, claims: dict[str, Any]) -> str:
    """HS256 signed with arbitrary bytes (PyJWT refuses a PEM as an HMAC key; an attacker does not)."""
    import hashlib
    import hmac

    signing_input = f"{_b64({'alg': 'HS256', 'typ': 'JWT'})}.{_b64(claims)}"
    signature = base64.urlsafe_b64encode(hmac.new(key, signing_input.encode(), hashlib.sha256).digest())
    return f"{signing_input}.{signature.rstrip(b'=').decode()}"


class RawWebSocket:
    """A hand-made client: sends frames aiohttp's client will not (invalid UTF-8) and reads without autoping."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def upgrade(cls, port: int, token: str, *,
                      version: str = "13") -> tuple[asyncio.StreamReader, asyncio.StreamWriter, bytes, str]:
        """Send an upgrade request; (reader, writer, the answer's head, the Sec-WebSocket-Key sent)."""
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write((f"GET /websocket?token={token} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                      f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: {version}\r\n"
                      "\r\n").encode())
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        return reader, writer, head, key

    @classmethod
    async def open(cls, port: int, token: str) -> RawWebSocket:
        reader, writer, head, _ = await cls.upgrade(port, token)
        assert head.startswith(b"HTTP/1.1 101"), head
        return cls(reader, writer)

    def send(self, opcode: int, payload: bytes) -> None:
        mask = os.urandom(4)
        size = len(payload)
        head = bytes([0x80 | opcode])
        if size < 126:
            head += bytes([0x80 | size])
        elif size < 65536:
            head += bytes([0x80 | 126]) + struct.pack("!H", size)
        else:
            head += bytes([0x80 | 127]) + struct.pack("!Q", size)
        self.writer.write(head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))

    async def frame(self, *, timeout_s: float = 5.0) -> tuple[int, bytes]:
        """The next (opcode, payload) from the server (server frames are not masked)."""
        first, second = await asyncio.wait_for(self.reader.readexactly(2), timeout_s)
        size = second & 0x7F
        if size == 126:
            (size,) = struct.unpack("!H", await self.reader.readexactly(2))
        elif size == 127:
            (size,) = struct.unpack("!Q", await self.reader.readexactly(8))
        return first & 0x0F, await asyncio.wait_for(self.reader.readexactly(size), timeout_s)

    async def close_code(self, *, timeout_s: float = 5.0) -> int:
        """Read frames until the close frame; its code."""
        while True:
            opcode, payload = await self.frame(timeout_s=timeout_s)
            if opcode == OP_CLOSE:
                return int(struct.unpack("!H", payload[:2])[0])

    def close(self) -> None:
        self.writer.close()


async def test_forged_tokens_are_refused_401_by_a_node_that_knows_both_algorithms(
        start_node: StartNode, http: aiohttp.ClientSession, tmp_path: Path) -> None:
    private, public = _rsa_pems()
    other_private, _ = _rsa_pems()
    (tmp_path / "public.pem").write_text(public)
    a = start_node("node-a", "--jwt-public-key", str(tmp_path / "public.pem"))
    forged = {
        "alg none": f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{_b64({'sub': 'mallory'})}.",
        "alg None, signature kept": f"{_b64({'alg': 'None'})}.{_b64({'sub': 'mallory'})}.c2ln",
        "HS256 keyed with the RS public key": _hs256_with(public.encode(), {"sub": "mallory"}),
        "RS256 by another key": jwt.encode({"sub": "mallory"}, other_private, algorithm="RS256"),
        "HS512 with the secret twice": jwt.encode({"sub": "mallory"}, SECRET * 2, algorithm="HS512"),
        "RS256 expired": jwt.encode({"sub": "mallory", "exp": 1_000_000}, private, algorithm="RS256"),
    }
    for name, token in forged.items():
        with pytest.raises(aiohttp.WSServerHandshakeError) as info:
            await http.ws_connect(a.ws_url, params={"token": token})
        assert info.value.status == 401, name
    # The same node accepts a token that is really signed with each configured key.
    for token in (jwt.encode({"sub": "rita", "exp": int(time.time()) + 600}, private, algorithm="RS256"),
                  make_token("rita")):
        async with http.ws_connect(a.ws_url, params={"token": token}) as ws:
            assert (await ws.receive_json(timeout=5))["user"] == "rita"


async def test_invalid_utf8_in_a_text_frame_closes_1007(start_node: StartNode) -> None:
    a = start_node("node-a")
    raw = await RawWebSocket.open(a.port, make_token("walt"))
    try:
        opcode, welcome = await raw.frame()
        assert opcode == OP_TEXT and json.loads(welcome)["type"] == "welcome"
        raw.send(OP_TEXT, b'{"type":"ping","x":"\xff\xfe"}')
        assert await raw.close_code() == 1007
    finally:
        raw.close()


async def test_binary_frame_gets_an_error_frame_and_the_connection_stays_open(
        start_node: StartNode, connect: Connect) -> None:
    a = start_node("node-a")
    client, _ = await connect(a, "bea")
    await client.ws.send_bytes(b'{"type":"ping"}')
    error = await client.next()
    assert (error["type"], error["code"]) == ("error", "bad_frame")
    await client.send({"type": "ping"})
    assert await client.next() == {"type": "pong"}


async def test_publish_outside_the_allowed_modules_gets_an_error_naming_the_module(
        start_node: StartNode, connect: Connect, redis_server: RedisInfo, redis_prefix: str) -> None:
    a = start_node("node-a", "--publish-modules", "chat,typing")
    client, _ = await connect(a, "carl")
    await client.send({"type": "publish", "module": "billing", "data": {"amount": -5}, "ref": 1})
    error = await client.next()
    assert (error["type"], error["code"]) == ("error", "forbidden_module") and "billing" in error["reason"]
    await client.send({"type": "publish", "module": "chat", "data": {"text": "hi"}, "ref": 2})
    assert await client.next() == {"type": "accepted", "ref": 2}
    redis = aioredis.from_url(redis_server.url, decode_responses=True)
    try:
        entries: Any = await redis.xrange(f"{redis_prefix}wsgate:publish")
    finally:
        await redis.aclose()
    assert [fields["module"] for _id, fields in entries] == ["chat"]


async def test_publish_is_recorded_as_the_tokens_user_whatever_the_frame_claims(
        start_node: StartNode, connect: Connect, redis_server: RedisInfo, redis_prefix: str) -> None:
    a = start_node("node-a")
    client, welcome = await connect(a, "bob")
    await client.send({"type": "publish", "module": "chat", "user": "alice", "session": "s1",
                       "data": {"user": "alice"}, "ref": 7})
    assert await client.next_of("accepted") == {"type": "accepted", "ref": 7}
    redis = aioredis.from_url(redis_server.url, decode_responses=True)
    try:
        entries: Any = await redis.xrange(f"{redis_prefix}wsgate:publish")
    finally:
        await redis.aclose()
    assert [(f["user"], f["session"]) for _id, f in entries] == [("bob", welcome["session"])]


async def test_a_user_never_receives_another_users_messages(
        start_node: StartNode, connect: Connect, http: aiohttp.ClientSession) -> None:
    a, b = start_node("node-a"), start_node("node-b")
    alice, _ = await connect(a, "alice")
    bob_a, _ = await connect(a, "bob")
    bob_b, _ = await connect(b, "bob")
    ids = []
    for store in (True, False):
        status, _ = await push(http, b, {"to": {"users": ["alice"]}, "module": "dm", "data": "secret",
                                         "store": store})
        assert status == 202
        ids.append((await alice.next_of("message"))["id"])
    # bob asks to resume from alice's ids: his replay comes from his own store only (empty).
    bob_since, welcome = await connect(b, "bob", since=ids[0])
    assert welcome["unread"] == {}
    for bob in (bob_a, bob_b, bob_since):
        await bob.send({"type": "ping"})
        assert await bob.next() == {"type": "pong"}  # nothing came before the pong
        await bob.send({"type": "ack", "id": ids[0]})  # acking alice's id must not touch her counts
    _, unread = await api_get(http, a, "/api/v1/users/alice/unread")
    assert unread["unread"] == {"dm": 1}
    assert [f for bob in (bob_a, bob_b, bob_since) for f in bob.frames if f.get("type") == "message"] == []


@pytest.mark.parametrize("path", ["/api/v1/users/alice/presence", "/api/v1/users/alice/unread", "/api/v1/stats"])
async def test_presence_unread_and_stats_are_closed_without_the_api_key(
        start_node: StartNode, connect: Connect, http: aiohttp.ClientSession, path: str) -> None:
    a = start_node("node-a")
    await connect(a, "alice")
    status, _ = await push(http, a, {"to": {"users": ["alice"]}, "module": "dm", "data": "secret"})
    assert status == 202
    attempts: list[tuple[dict[str, str], str]] = [
        ({}, ""),
        ({"Authorization": f"Bearer {make_token('alice')}"}, ""),  # a user's own client token is not an API key
        ({"Authorization": f"Bearer {API_KEY}x"}, ""),
        ({"Authorization": API_KEY}, ""),
        ({"X-Api-Key": API_KEY}, f"?api_key={API_KEY}&key={API_KEY}"),
    ]
    for headers, query in attempts:
        async with http.get(f"{a.url}{path}{query}", headers=headers) as resp:
            text = await resp.text()
            assert resp.status == 401, (headers, query, text)
            assert "alice" not in text and "dm" not in text
    async with http.post(f"{a.url}/api/v1/users/alice/disconnect", headers={}) as resp:
        assert resp.status == 401
    status, body = await api_get(http, a, path)  # with the key it works (the test can tell the two apart)
    assert status == 200 and body


def _memory_kib(pid: int) -> dict[str, int]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            fields[name] = int(value.split()[0])
    return fields


async def test_a_client_that_stops_reading_is_closed_4008_and_node_memory_stays_bounded(
        start_node: StartNode, http: aiohttp.ClientSession) -> None:
    a = start_node("node-a", "--send-queue-max", "8")
    raw = await RawWebSocket.open(a.port, make_token("sloth"))
    try:
        await raw.frame()  # the welcome; from here on the client reads nothing
        before = _memory_kib(a.proc.pid)
        big = "x" * 400_000
        total = 0
        for _ in range(100):  # 40 MB offered to one session that reads nothing
            status, body = await push(http, a, {"to": {"users": ["sloth"]}, "module": "m", "data": big,
                                                "store": False})
            assert status == 202
            total += 1
            if body["online_sessions"] == 0:
                break

        async def closed() -> bool:
            async with http.get(f"{a.url}/metrics", headers=WITH_KEY) as resp:
                return 'wsnode_closes_total{code="4008"} 1.0' in await resp.text()

        await eventually(closed)
        after = _memory_kib(a.proc.pid)
        growth_mib = (after["VmHWM"] - before["VmRSS"]) / 1024
        print(f"node peak memory grew {growth_mib:.1f} MiB over {total} pushes of 400 kB to a non-reading client")
        # The queue holds at most 8 frames (3.2 MB); an unbounded one would hold everything offered.
        assert growth_mib < 24, (growth_mib, total, before, after)
    finally:
        raw.close()
