"""The lean session path (wsnode/front.py, wsnode/wsconn.py) over a real node process and raw sockets: the frames
aiohttp's client will not send (unmasked, oversized control, fragments, bad UTF-8), pings, the close handshake,
the heartbeat timeout and refused upgrades."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import struct
from collections.abc import AsyncIterator
from typing import cast

import aiohttp
import pytest

from tests.wsnode.conftest import StartNode, make_token
from tests.wsnode.test_abuse import RawWebSocket
from wsnode.wsconn import LeanConnection, LeanHub
from wsnode.wsframes import (
    OP_CLOSE,
    OP_CONTINUATION,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    accept_key,
    encode_frame,
)


class Raw(RawWebSocket):
    """A raw-socket client: every frame as the test writes it (fragments, unmasked), every server frame as it comes."""

    @classmethod
    async def connect(cls, port: int, token: str, *, version: str = "13") -> tuple[Raw, bytes]:
        reader, writer, head, key = await cls.upgrade(port, token, version=version)
        if head.startswith(b"HTTP/1.1 101"):
            assert f"Sec-WebSocket-Accept: {accept_key(key)}\r\n".encode() in head
        return cls(reader, writer), head

    @classmethod
    async def open(cls, port: int, user: str) -> Raw:
        raw, head = await cls.connect(port, make_token(user))
        assert head.startswith(b"HTTP/1.1 101"), head
        opcode, welcome = await raw.frame()
        assert opcode == OP_TEXT and json.loads(welcome)["type"] == "welcome"
        return raw

    def send(self, opcode: int, payload: bytes = b"", *, fin: bool = True, masked: bool = True) -> None:
        self.writer.write(encode_frame(opcode, payload, fin=fin, mask=os.urandom(4) if masked else None))

    async def eof(self, timeout_s: float = 5.0) -> bool:
        return await asyncio.wait_for(self.reader.read(), timeout_s) == b""



@contextlib.asynccontextmanager
async def opened(start_node: StartNode, user: str, *node_args: str) -> AsyncIterator[Raw]:
    """A node started with `node_args` and an open raw session of `user` on it."""
    node = start_node(*node_args)
    raw = await Raw.open(node.port, user)
    try:
        yield raw
    finally:
        raw.close()


@pytest.mark.parametrize(("name", "frames", "code"), [
    ("unmasked frame", [(OP_TEXT, b'{"type":"ping"}', True, False)], 1002),
    ("control frame over 125 bytes", [(OP_PING, b"x" * 126, True, True)], 1002),
    ("fragmented control frame", [(OP_PING, b"x", False, True)], 1002),
    ("continuation without a start", [(OP_CONTINUATION, b"x", True, True)], 1002),
    ("bad UTF-8 across fragments", [(OP_TEXT, b'{"type":"', False, True), (OP_CONTINUATION, b"\xff\xfe", True, True)],
     1007),
    ("a frame over --max-frame-bytes", [(OP_TEXT, b"x" * 70_000, True, True)], 1009),
    ("close code 1005 on the wire", [(OP_CLOSE, struct.pack("!H", 1005), True, True)], 1002),
])
async def test_protocol_violations_close_with_their_code(start_node: StartNode, name: str,
                                                         frames: list[tuple[int, bytes, bool, bool]],
                                                         code: int) -> None:
    async with opened(start_node, "vio", "node-a", "--max-frame-bytes", "65536") as raw:
        for opcode, payload, fin, masked in frames:
            raw.send(opcode, payload, fin=fin, masked=masked)
        assert await raw.close_code() == code, name
        assert await raw.eof()


async def test_fragmented_message_ping_between_fragments_and_pong(start_node: StartNode) -> None:
    async with opened(start_node, "frag", "node-a") as raw:
        raw.send(OP_TEXT, b'{"type":', fin=False)
        raw.send(OP_PING, b"hello")
        raw.send(OP_CONTINUATION, b'"pi', fin=False)
        raw.send(OP_CONTINUATION, b'ng"}')
        assert await raw.frame() == (OP_PONG, b"hello")
        opcode, text = await raw.frame()
        assert opcode == OP_TEXT and json.loads(text) == {"type": "pong"}


async def test_close_is_echoed_then_the_connection_ends(start_node: StartNode) -> None:
    async with opened(start_node, "bye", "node-a") as raw:
        raw.send(OP_CLOSE, struct.pack("!H", 1000) + b"done")
        assert await raw.close_code() == 1000
        assert await raw.eof()


async def test_a_peer_that_never_answers_pings_is_dropped(start_node: StartNode) -> None:
    async with opened(start_node, "mute", "node-a", "--heartbeat", "1") as raw:
        opcode, _ = await raw.frame(timeout_s=3)
        assert opcode == OP_PING
        assert await raw.eof(timeout_s=3)  # no pong within half the heartbeat (plus the timer's tick)


async def test_a_peer_that_answers_pings_stays(start_node: StartNode) -> None:
    async with opened(start_node, "chatty", "node-a", "--heartbeat", "1") as raw:
        for _ in range(3):
            opcode, payload = await raw.frame(timeout_s=3)
            assert opcode == OP_PING
            raw.send(OP_PONG, payload)
        raw.send(OP_TEXT, b'{"type":"ping"}')
        assert json.loads((await raw.frame())[1]) == {"type": "pong"}


@pytest.mark.parametrize(("token", "version", "status"), [
    ("garbage", "13", 401),
    (None, "13", 401),
    ("valid", "8", 426),
])
async def test_a_refused_upgrade_answers_its_status_and_closes(start_node: StartNode, token: str | None,
                                                               version: str, status: int) -> None:
    node = start_node("node-a")
    given = make_token("refused") if token == "valid" else (token or "")
    raw, head = await Raw.connect(node.port, given, version=version)
    try:
        assert head.startswith(b"HTTP/1.1 %d " % status), head
        assert b"Connection: close" in head
        body = await raw.reader.read()
        assert json.loads(body)["status"] == status
    finally:
        raw.close()


class _Transport:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.aborted = False

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def abort(self) -> None:
        self.aborted = True


@pytest.mark.parametrize(("seen", "ping_at", "now", "writes", "aborted"), [
    (0.0, 0.0, 9.9, 0, False),   # heard from within the heartbeat: nothing
    (0.0, 0.0, 10.0, 1, False),  # silent for a heartbeat: one ping
    (0.0, 10.0, 14.9, 0, False),  # the ping's answer is not yet late
    (0.0, 10.0, 15.0, 0, True),  # no answer within half the heartbeat: dropped, no close frame
])
def test_beat_table(seen: float, ping_at: float, now: float, writes: int, aborted: bool) -> None:
    transport = _Transport()
    conn = LeanConnection(cast(LeanHub, None), cast(asyncio.Transport, transport))
    conn._state, conn._seen, conn._ping_at = 1, seen, ping_at
    conn.beat(now, 10.0, 5.0)
    assert transport.writes == [encode_frame(OP_PING)] * writes and transport.aborted is aborted


async def test_ws_compress_keeps_aiohttp_path_and_deflate(start_node: StartNode) -> None:
    node = start_node("node-a", "--ws-compress")
    async with aiohttp.ClientSession() as http, http.ws_connect(node.ws_url, params={"token": make_token("zip")},
                                                                  compress=15) as ws:
        assert ws.compress == 15  # permessage-deflate negotiated: aiohttp's path
        assert (await ws.receive_json(timeout=5))["type"] == "welcome"
        await ws.send_json({"type": "ping"})
        assert await ws.receive_json(timeout=5) == {"type": "pong"}


async def test_front_reads_a_head_in_pieces_and_hands_other_requests_to_aiohttp(start_node: StartNode) -> None:
    node = start_node("node-a")
    reader, writer = await asyncio.open_connection("127.0.0.1", node.port)
    try:
        # A plain request first, its head in two writes: aiohttp answers it and keeps the connection.
        writer.write(b"GET /health HTTP/1.1\r\nHo")
        await asyncio.sleep(0.05)
        writer.write(b"st: x\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 200"), head
    finally:
        writer.close()
    raw, head = await Raw.connect(node.port, make_token("pieces"))
    try:
        assert head.startswith(b"HTTP/1.1 101")
        assert json.loads((await raw.frame())[1])["type"] == "welcome"
    finally:
        raw.close()


async def test_a_post_upgrade_still_gets_aiohttps_405_before_the_token_check(start_node: StartNode) -> None:
    node = start_node("node-a")
    reader, writer = await asyncio.open_connection("127.0.0.1", node.port)
    try:
        writer.write(b"POST /websocket HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     b"Content-Length: 0\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 405"), head
    finally:
        writer.close()


async def test_a_close_before_the_101_writes_no_close_frame() -> None:
    """A drain that closes a session still being admitted: nothing on the wire yet (the upgrade gets a refusal)."""
    transport = _Transport()
    conn = LeanConnection(cast(LeanHub, None), cast(asyncio.Transport, transport))
    assert await conn.close(code=1001) is True
    assert conn.closed and transport.writes == []
    assert await conn.close(code=1001) is False
