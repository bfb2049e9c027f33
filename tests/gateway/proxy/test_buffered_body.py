"""`http.buffered_body`: when a whole body goes out with its head in one write, and what stays buffered."""

from __future__ import annotations

import pytest

from gateway.proxy.conn import Conn
from gateway.proxy.http import JOIN_MAX_BYTES, buffered_body
from gateway.proxy.httpparse import Framing


@pytest.mark.parametrize(("framing", "length", "buffered", "body", "left"), [
    (Framing.LENGTH, 5, b"hello", b"hello", b""),
    (Framing.LENGTH, 5, b"helloHTTP/1.1 200", b"hello", b"HTTP/1.1 200"),  # what follows the body stays
    (Framing.LENGTH, 6, b"hello", None, b"hello"),  # not all here yet: relayed
    (Framing.LENGTH, JOIN_MAX_BYTES, b"x" * JOIN_MAX_BYTES, b"x" * JOIN_MAX_BYTES, b""),
    (Framing.LENGTH, JOIN_MAX_BYTES + 1, b"x" * (JOIN_MAX_BYTES + 1), None, b"x" * (JOIN_MAX_BYTES + 1)),  # too large
    (Framing.CHUNKED, 0, b"5\r\nhello\r\n0\r\n\r\n", None, b"5\r\nhello\r\n0\r\n\r\n"),  # only Content-Length
    (Framing.UNTIL_CLOSE, 0, b"hello", None, b"hello"),
    (Framing.NONE, 0, b"GET / HTTP/1.1", None, b"GET / HTTP/1.1"),
])
def test_buffered_body(framing: Framing, length: int, buffered: bytes, body: bytes | None, left: bytes) -> None:
    conn = Conn(None)
    conn.buffer += buffered
    assert buffered_body(conn, framing, length) == body
    assert bytes(conn.buffer) == left
