"""The lean POST /api/v1/push (wsnode/front.py, wsnode/pushconn.py) over raw sockets against a real node and Redis:
keep-alive, pipelining, Connection: close, HTTP/1.0, half-close, the hand-over to aiohttp, and the same answers
as aiohttp's route. aiohttp's answers carry its `Server` header and the lean path's do not, which is how these tests
tell the two paths apart."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest

from tests.wsnode.conftest import API_KEY, Connect, StartNode
from wsnode.api_answers import MAX_BODY_BYTES

AUTH = f"Authorization: Bearer {API_KEY}"


def request(body: bytes | dict[str, Any], *headers: str, line: str = "POST /api/v1/push HTTP/1.1",
            auth: str | None = AUTH) -> bytes:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    fields = ["Host: 127.0.0.1", *([auth] if auth else []), *headers]
    if not any(h.lower().startswith(("content-length:", "transfer-encoding:")) for h in headers):
        fields.append(f"Content-Length: {len(raw)}")
    return ("\r\n".join([line, *fields]) + "\r\n\r\n").encode("latin-1") + raw


def push_body(user: str, n: int = 0, **extra: Any) -> dict[str, Any]:
    return {"to": {"users": [user]}, "module": "m", "event": "e", "data": {"n": n}, "store": True, **extra}


HEALTH = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"


class Answer:
    def __init__(self, status_line: str, headers: dict[str, str], body: bytes) -> None:
        self.status_line, self.headers, self.body = status_line, headers, body
        self.status = int(status_line.split(" ")[1])

    @property
    def lean(self) -> bool:
        return "server" not in self.headers

    def json(self) -> Any:
        return json.loads(self.body)


class Conn:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int) -> Conn:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return cls(reader, writer)

    def send(self, raw: bytes) -> None:
        self.writer.write(raw)

    async def answer(self, timeout_s: float = 5.0) -> Answer:
        while True:
            head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), timeout_s)
            lines = head.decode("latin-1").split("\r\n")[:-2]
            headers = {k.lower(): v for k, _, v in (line.partition(": ") for line in lines[1:])}
            if lines[0].split(" ")[1] == "100":  # an interim answer to Expect: 100-continue
                continue
            body = await asyncio.wait_for(self.reader.readexactly(int(headers.get("content-length", "0"))), timeout_s)
            return Answer(lines[0], headers, body)

    async def eof(self, timeout_s: float = 5.0) -> bool:
        return await asyncio.wait_for(self.reader.read(), timeout_s) == b""

    def close(self) -> None:
        self.writer.close()


async def test_keep_alive_pushes_are_lean_until_another_request(start_node: StartNode, connect: Connect) -> None:
    node = start_node("node-a")
    client, _ = await connect(node, "kim")
    conn = await Conn.open(node.port)
    try:
        for n in range(3):
            conn.send(request(push_body("kim", n)))
            answer = await conn.answer()
            assert answer.status == 202 and answer.lean, answer.headers
            assert answer.headers["content-type"] == "application/json; charset=utf-8"
            body = answer.json()
            assert body["online_sessions"] == 1 and body["stored"] == 1 and "kim" in body["ids"]
        conn.send(b"GET /api/v1/stats HTTP/1.1\r\nHost: x\r\n" + AUTH.encode() + b"\r\n\r\n")
        stats = await conn.answer()
        assert stats.status == 200 and not stats.lean  # aiohttp's from here on
        conn.send(request(push_body("kim", 3)))
        after = await conn.answer()
        assert after.status == 202 and not after.lean
        assert [m["data"]["n"] for m in await client.messages(4)] == [0, 1, 2, 3]
    finally:
        conn.close()


async def test_pipelined_requests_are_answered_in_order(start_node: StartNode, connect: Connect) -> None:
    node = start_node("node-a")
    client, _ = await connect(node, "pia")
    conn = await Conn.open(node.port)
    try:
        conn.send(b"".join([request(push_body("pia", 0)), request(b"{not json"), request(push_body("pia", 1)),
                            HEALTH, request(push_body("pia", 2))]))
        answers = [await conn.answer() for _ in range(5)]
        assert [a.status for a in answers] == [202, 400, 202, 200, 202]
        assert [a.lean for a in answers] == [True, True, True, False, False]
        assert [m["data"]["n"] for m in await client.messages(3)] == [0, 1, 2]
    finally:
        conn.close()


async def test_connection_close_is_honoured(start_node: StartNode) -> None:
    node = start_node("node-a")
    conn = await Conn.open(node.port)
    try:
        conn.send(request(push_body("cc"), "Connection: close") + request(push_body("cc", 1)))
        answer = await conn.answer()
        assert answer.status == 202 and answer.lean and answer.headers["connection"] == "close"
        assert await conn.eof()  # the request behind it is not read
    finally:
        conn.close()


@pytest.mark.parametrize(("connection", "stays"), [(None, False), ("keep-alive", True)])
async def test_http_1_0(start_node: StartNode, connection: str | None, stays: bool) -> None:
    node = start_node("node-a")
    conn = await Conn.open(node.port)
    extra = [f"Connection: {connection}"] if connection else []
    try:
        conn.send(request(push_body("old"), *extra, line="POST /api/v1/push HTTP/1.0"))
        answer = await conn.answer()
        assert answer.status_line == "HTTP/1.0 202 Accepted" and answer.lean
        assert answer.headers.get("connection") == connection
        if stays:
            conn.send(request(push_body("old", 1), *extra, line="POST /api/v1/push HTTP/1.0"))
            assert (await conn.answer()).status == 202
        else:
            assert await conn.eof()
    finally:
        conn.close()


async def test_a_client_that_half_closes_gets_its_answers(start_node: StartNode) -> None:
    node = start_node("node-a")
    conn = await Conn.open(node.port)
    try:
        conn.send(request(push_body("half", 0)) + request(push_body("half", 1)))
        conn.writer.write_eof()
        answers = [await conn.answer(), await conn.answer()]
        assert [(a.status, a.lean) for a in answers] == [(202, True), (202, True)]
        assert answers[0].json()["ids"]["half"] != answers[1].json()["ids"]["half"]
        assert await conn.eof()
    finally:
        conn.close()


async def test_a_half_closed_connection_handed_to_aiohttp_is_answered_and_closed(start_node: StartNode) -> None:
    node = start_node("node-a")
    conn = await Conn.open(node.port)
    try:
        conn.send(request(push_body("halfh")) + HEALTH)
        conn.writer.write_eof()
        answers = [await conn.answer(), await conn.answer()]
        assert [(a.status, a.lean) for a in answers] == [(202, True), (200, False)]
        assert await conn.eof()
    finally:
        conn.close()


@pytest.mark.parametrize(("name", "raw", "status"), [
    ("a malformed head", b"POST /api/v1/push HTTP/1.1\r\nHost: x\r\nbad header\r\n\r\n", 400),
    ("a chunked body", request(b"", "Transfer-Encoding: chunked") + b"%x\r\n%s\r\n0\r\n\r\n" % (
        len(json.dumps(push_body("ch"))), json.dumps(push_body("ch")).encode()), 202),
    ("Expect: 100-continue", request(push_body("ex"), "Expect: 100-continue"), 202),
    ("a body over the limit", request(b"x" * (MAX_BODY_BYTES + 1)), 413),
])
async def test_what_the_lean_path_does_not_frame_goes_to_aiohttp(start_node: StartNode, name: str, raw: bytes,
                                                                 status: int) -> None:
    node = start_node("node-a")
    conn = await Conn.open(node.port)
    try:
        conn.send(request(push_body("first")) + raw)
        first = await conn.answer()
        assert first.status == 202 and first.lean, name
        answer = await conn.answer()
        assert answer.status == status and not answer.lean, (name, answer.body)
    finally:
        conn.close()


@pytest.mark.parametrize(("name", "raw"), [
    ("no key", request(push_body("par"), auth=None)),
    ("a wrong key", request(push_body("par"), auth="Authorization: Bearer nope")),
    ("not a bearer key", request(push_body("par"), auth=f"Authorization: Basic {API_KEY}")),
    ("not JSON", request(b"{not json")),
    ("an empty body", request(b"")),
    ("no recipients", request({"module": "m", "data": {}})),
    ("a bad user id", request(push_body("bad user"))),
    ("an Idempotency-Key too long", request(push_body("par"), "Idempotency-Key: " + "k" * 201)),
])
async def test_the_lean_path_answers_as_aiohttp_does(start_node: StartNode, name: str, raw: bytes) -> None:
    node = start_node("node-a")
    lean, via_aiohttp = await Conn.open(node.port), await Conn.open(node.port)
    try:
        lean.send(raw)
        via_aiohttp.send(HEALTH + raw)  # a first request the lean path does not serve: the connection is aiohttp's
        ours = await lean.answer()
        assert (await via_aiohttp.answer()).status == 200
        theirs = await via_aiohttp.answer()
        assert ours.lean and not theirs.lean, name
        assert ours.status == theirs.status and ours.status in (400, 401), name
        assert ours.json() == theirs.json(), name
        assert ours.headers["content-type"] == theirs.headers["content-type"], name
        assert ours.headers.get("www-authenticate") == theirs.headers.get("www-authenticate"), name
    finally:
        lean.close()
        via_aiohttp.close()


async def test_an_idempotency_key_is_one_push_on_both_paths(start_node: StartNode) -> None:
    node = start_node("node-a")
    lean, via_aiohttp = await Conn.open(node.port), await Conn.open(node.port)
    try:
        raw = request(push_body("idem"), "Idempotency-Key: order-7")
        lean.send(raw)
        first = await lean.answer()
        via_aiohttp.send(HEALTH + raw)
        await via_aiohttp.answer()
        again = await via_aiohttp.answer()
        assert first.lean and not again.lean
        assert first.status == again.status == 202 and first.json() == again.json()
    finally:
        lean.close()
        via_aiohttp.close()


async def test_pushes_are_logged_as_aiohttp_logs_them(start_node: StartNode) -> None:
    node = start_node("node-a")
    conn = await Conn.open(node.port)
    try:
        conn.send(request(push_body("logged"), line="POST /api/v1/push?secret=1 HTTP/1.1",
                          auth="Authorization: Bearer x"))
        assert (await conn.answer()).status == 401
    finally:
        conn.close()
    node.proc.stop()
    log = node.proc.log()
    assert "INFO aiohttp.access 127.0.0.1 POST /api/v1/push 401 " in log
    assert "secret=1" not in log


async def test_a_connection_without_a_whole_first_head_in_time_gets_408_and_is_closed(
        start_node: StartNode, connect: Connect) -> None:
    node = start_node("node-a", "--head-timeout", "0.5")
    client, _ = await connect(node, "hal")
    served = await Conn.open(node.port)
    late: list[Conn] = []
    try:
        served.send(request(push_body("hal", 0)))
        assert (await served.answer()).status == 202  # its head came in time: the timeout no longer applies
        opened = time.monotonic()
        silent = await Conn.open(node.port)
        trickling = await Conn.open(node.port)
        late.extend((silent, trickling))
        trickling.send(b"GET /websocket HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n")
        for conn in late:
            answer = await conn.answer(timeout_s=5.0)
            elapsed = time.monotonic() - opened
            assert answer.status == 408 and answer.headers["connection"] == "close", answer.headers
            assert answer.json() == {"status": 408, "error": "request head not received in time"}
            assert await conn.eof()
            assert 0.5 <= elapsed < 3.0, elapsed
        # The keep-alive push connection and the WebSocket session, both older than the timeout, are still served.
        served.send(request(push_body("hal", 1)))
        assert (await served.answer()).status == 202
        assert [m["data"]["n"] for m in await client.messages(2)] == [0, 1]
        assert "- - 408" in node.proc.log(), "the 408 is in the access log"
    finally:
        for conn in (served, *late):
            conn.close()
