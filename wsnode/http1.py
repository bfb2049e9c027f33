"""HTTP/1.1 request framing for the node's lean request path (pure: no I/O): which request at the start of a buffer
the front serves itself, where its body ends, whether the connection stays open after it, and the answer's bytes.

The lean path serves only requests it can frame exactly (RFC 9112 section 6): a body of one `Content-Length`, no
`Transfer-Encoding`, no `Expect`, HTTP/1.0 or 1.1, a route it was given. Every other request (a malformed head
included) is `HAND_OVER`: the caller passes it, from its first byte, to aiohttp, which answers it its own way. So a
request that two parsers could frame two ways (request smuggling) is never served here.
"""

from __future__ import annotations

from dataclasses import dataclass
from email.utils import formatdate
from http import HTTPStatus
from typing import Final, Literal

from wsnode.errors import WebSocketError
from wsnode.handshake import RequestHead, head_length, parse_head

HAND_OVER: Final = "hand-over"
HandOver = Literal["hand-over"]
_DIGITS = frozenset(b"0123456789")


@dataclass(frozen=True, slots=True)
class Framed:
    """A whole request at the start of the buffer: its head, where its body starts and ends."""

    head: RequestHead
    body_start: int
    end: int  # the first byte after the body: the next request's start
    keep_alive: bool


def keeps_alive(head: RequestHead) -> bool:
    """Whether the connection stays open after the answer (RFC 9112 section 9.3): HTTP/1.1 unless `close`, HTTP/1.0
    only with `keep-alive`."""
    tokens = head.tokens("connection")
    if head.version >= (1, 1):
        return "close" not in tokens
    return "keep-alive" in tokens


def content_length(head: RequestHead) -> int | None:
    """The one Content-Length as a number; None when absent, repeated or not 1 to 18 ASCII digits (left to aiohttp)."""
    values = [value for name, value in head.headers if name == "content-length"]
    # 18 digits: an int64 as the gateway reads it, and far from int()'s limit on digits (a ValueError).
    if len(values) != 1 or not 0 < len(values[0]) <= 18 or not _DIGITS.issuperset(values[0].encode("latin-1")):
        return None
    return int(values[0])


def frame_request(buf: bytes, routes: frozenset[tuple[str, str]], max_body: int) -> Framed | HandOver | None:
    """The request at the start of `buf` when it is one of `routes` ((method, path) pairs) with a body of at most
    `max_body` bytes; None while its head or body is still incomplete; HAND_OVER for any other request."""
    try:
        end = head_length(buf)
        if end < 0:
            return None
        head = parse_head(buf[:end])
    except WebSocketError:
        return HAND_OVER
    if (head.method, head.path) not in routes or head.version not in ((1, 1), (1, 0)):
        return HAND_OVER
    length = content_length(head)
    # A body larger than aiohttp's client_max_size gets aiohttp's own 413; a request without Host is HTTP/1.1's 400.
    if length is None or length > max_body or (head.version == (1, 1) and head.header("host") is None):
        return HAND_OVER
    for name, _value in head.headers:
        if name in ("transfer-encoding", "expect"):
            return HAND_OVER
    if len(buf) < end + length:
        return None
    return Framed(head, end, end + length, keeps_alive(head))


def http_date(epoch_s: float) -> str:
    """The Date header's value (RFC 9110 section 5.6.7)."""
    return formatdate(epoch_s, usegmt=True)


def response(status: int, body: bytes, *, version: tuple[int, int], keep_alive: bool, date: str,
             headers: tuple[tuple[str, str], ...] = ()) -> bytes:
    """A JSON answer's bytes, in the request's HTTP version (as aiohttp answers), with the Connection header that
    tells the client what the server does next."""
    phrase = HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_ else "Error"
    lines = [f"HTTP/{version[0]}.{version[1]} {status} {phrase}", "Content-Type: application/json; charset=utf-8",
             f"Content-Length: {len(body)}", f"Date: {date}"]
    lines.extend(f"{name}: {value}" for name, value in headers)
    if keep_alive and version < (1, 1):
        lines.append("Connection: keep-alive")
    elif not keep_alive and version >= (1, 1):
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body
