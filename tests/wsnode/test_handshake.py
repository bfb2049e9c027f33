"""wsnode.handshake: the upgrade request's checks as a table, the 101 and the refusals (RFC 6455 section 4)."""

from __future__ import annotations

import json

import pytest

from wsnode.errors import WebSocketError, WsnodeError
from wsnode.handshake import (
    MAX_HEAD_BYTES,
    check_upgrade,
    head_length,
    parse_head,
    refusal,
    response_101,
    token_of,
    wants_websocket,
)

KEY = "dGhlIHNhbXBsZSBub25jZQ=="
GOOD = {
    "Host": "node:8080",
    "Upgrade": "websocket",
    "Connection": "Upgrade",
    "Sec-WebSocket-Key": KEY,
    "Sec-WebSocket-Version": "13",
}


def head(headers: dict[str, str] | None = None, *, line: str = "GET /websocket?token=t&since=5 HTTP/1.1",
         drop: tuple[str, ...] = ()) -> bytes:
    fields = {**GOOD, **(headers or {})}
    return (line + "\r\n" + "".join(f"{k}: {v}\r\n" for k, v in fields.items() if k not in drop)
            + "\r\n").encode("latin-1")


def test_a_valid_upgrade() -> None:
    parsed = parse_head(head({"Sec-WebSocket-Protocol": "b, a"}))
    assert parsed.method == "GET" and parsed.path == "/websocket" and parsed.version == (1, 1)
    assert parsed.query() == {"token": "t", "since": "5"}
    assert wants_websocket(parsed)
    upgrade = check_upgrade(parsed)
    assert upgrade.key == KEY and upgrade.protocols == ("a", "b")


@pytest.mark.parametrize(("headers", "line", "drop", "status"), [
    ({}, "POST /websocket HTTP/1.1", (), 405),
    ({}, "GET /websocket HTTP/1.0", (), 400),
    ({"Upgrade": "h2c"}, "GET /websocket HTTP/1.1", (), 400),
    ({"Connection": "keep-alive"}, "GET /websocket HTTP/1.1", (), 400),
    ({}, "GET /websocket HTTP/1.1", ("Connection",), 400),
    ({}, "GET /websocket HTTP/1.1", ("Sec-WebSocket-Version",), 426),
    ({"Sec-WebSocket-Version": "8"}, "GET /websocket HTTP/1.1", (), 426),
    ({}, "GET /websocket HTTP/1.1", ("Sec-WebSocket-Key",), 400),
    ({"Sec-WebSocket-Key": "c2hvcnQ="}, "GET /websocket HTTP/1.1", (), 400),  # 5 bytes
    ({"Sec-WebSocket-Key": "not base64 at all!!!!!=="}, "GET /websocket HTTP/1.1", (), 400),
    ({"Sec-WebSocket-Key": "é" * 24}, "GET /websocket HTTP/1.1", (), 400),
])
def test_check_upgrade_refuses_with_its_status(headers: dict[str, str], line: str, drop: tuple[str, ...],
                                               status: int) -> None:
    with pytest.raises(WebSocketError) as info:
        check_upgrade(parse_head(head(headers, line=line, drop=drop)))
    assert info.value.status == status
    assert isinstance(info.value, WsnodeError)


@pytest.mark.parametrize("headers", [
    {"Connection": "keep-alive, Upgrade"},  # Firefox's spelling
    {"Upgrade": "WebSocket"},
    {"Connection": "upgrade"},
])
def test_token_lists_and_case(headers: dict[str, str]) -> None:
    assert check_upgrade(parse_head(head(headers))).key == KEY


@pytest.mark.parametrize("raw", [
    b"GET /websocket\r\n\r\n",
    b"GET  /websocket HTTP/1.1\r\n\r\n",
    b"GET /websocket HTTP/1.1\r\nno colon\r\n\r\n",
    b"GET /websocket HTTP/1.1\r\n folded: x\r\n\r\n",
    b"GET /websocket HTTP/1.1\r\nbad name: x\r\n\r\n",
    b"G(T /websocket HTTP/1.1\r\n\r\n",
    b"GET /websocket HTTP/1.1\r\nAuthorization: Bearer k\x01\r\n\r\n",  # a control character in a value
    b"GET /websocket HTTP/1.1\r\nX: a\x7fb\r\n\r\n",
    b"GET /web\x01socket HTTP/1.1\r\n\r\n",
])
def test_malformed_heads_are_400(raw: bytes) -> None:
    with pytest.raises(WebSocketError) as info:
        parse_head(raw)
    assert info.value.status == 400


def test_too_many_headers_is_431() -> None:
    raw = b"GET / HTTP/1.1\r\n" + b"".join(b"x%d: y\r\n" % i for i in range(101)) + b"\r\n"
    with pytest.raises(WebSocketError) as info:
        parse_head(raw)
    assert info.value.status == 431


@pytest.mark.parametrize(("buf", "length"), [
    (b"", -1),
    (b"GET / HTTP/1.1\r\n", -1),
    (b"GET / HTTP/1.1\r\n\r\n", 18),
    (b"GET / HTTP/1.1\r\n\r\n\x81\x85", 18),  # a frame right behind the head is left for the frame parser
])
def test_head_length(buf: bytes, length: int) -> None:
    assert head_length(buf) == length


def test_an_endless_head_is_431() -> None:
    with pytest.raises(WebSocketError) as info:
        head_length(b"GET / HTTP/1.1\r\n" + b"x" * MAX_HEAD_BYTES)
    assert info.value.status == 431


def test_non_upgrade_requests_are_not_sniffed_as_websocket() -> None:
    assert not wants_websocket(parse_head(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"))
    assert not wants_websocket(parse_head(head({"Upgrade": "h2c"})))


@pytest.mark.parametrize(("headers", "target", "token"), [
    ({"Authorization": "Bearer abc"}, "/websocket?token=q", "abc"),  # the header wins, as in the aiohttp path
    ({"Authorization": "Basic abc"}, "/websocket?token=q", "q"),
    ({}, "/websocket?token=q&token=r", "q"),
    ({}, "/websocket", None),
    ({}, "/websocket?token=", None),
])
def test_token_places(headers: dict[str, str], target: str, token: str | None) -> None:
    parsed = parse_head(head(headers, line=f"GET {target} HTTP/1.1"))
    assert token_of(parsed, parsed.query()) == token


def test_response_101_carries_the_rfc_accept_value() -> None:
    wire = response_101(KEY)
    assert wire.startswith(b"HTTP/1.1 101 Switching Protocols\r\n") and wire.endswith(b"\r\n\r\n")
    assert b"\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n" in wire
    assert b"Sec-WebSocket-Protocol" not in wire
    assert b"\r\nSec-WebSocket-Protocol: chat\r\n" in response_101(KEY, "chat")


@pytest.mark.parametrize(("status", "extra"), [
    (401, b""), (403, b""), (429, b""), (503, b""), (405, b"Allow: GET\r\n"),
    (426, b"Sec-WebSocket-Version: 13\r\n"), (431, b""),
])
def test_refusal_answers_status_json_and_closes(status: int, extra: bytes) -> None:
    wire = refusal(status, "no")
    head_part, _, body = wire.partition(b"\r\n\r\n")
    assert head_part.startswith(b"HTTP/1.1 %d " % status)
    assert b"\r\nConnection: close" in head_part and extra in head_part + b"\r\n"
    assert b"Content-Length: %d" % len(body) in head_part
    assert json.loads(body) == {"status": status, "error": "no"}
