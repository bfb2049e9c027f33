"""wsnode/http1.py: which requests the lean path frames itself, where each ends, keep-alive, and the answer's bytes."""

from __future__ import annotations

import pytest

from wsnode.handshake import MAX_HEAD_BYTES, parse_head
from wsnode.http1 import HAND_OVER, Framed, frame_request, keeps_alive, response

ROUTES = frozenset({("POST", "/api/v1/push")})
MAX_BODY = 100


def post(*headers: str, body: bytes = b"", line: str = "POST /api/v1/push HTTP/1.1") -> bytes:
    return ("\r\n".join([line, *headers]) + "\r\n\r\n").encode("latin-1") + body


OK = ("Host: x", "Content-Length: 2")


@pytest.mark.parametrize(("name", "buf", "want"), [
    ("a whole push", post(*OK, body=b"{}"), (2, True)),
    ("a query string", post(*OK, body=b"{}", line="POST /api/v1/push?x=1 HTTP/1.1"), (2, True)),
    ("an empty body", post("Host: x", "Content-Length: 0"), (0, True)),
    ("Connection: close", post(*OK, "Connection: close", body=b"{}"), (2, False)),
    ("HTTP/1.0", post("Content-Length: 2", body=b"{}", line="POST /api/v1/push HTTP/1.0"), (2, False)),
    ("HTTP/1.0 keep-alive", post("Content-Length: 2", "Connection: Keep-Alive", body=b"{}",
                                 line="POST /api/v1/push HTTP/1.0"), (2, True)),
    ("a body of the limit", post("Host: x", f"Content-Length: {MAX_BODY}", body=b"x" * MAX_BODY), (MAX_BODY, True)),
    ("the next request behind", post(*OK, body=b"{}") + b"GET / HTTP/1.1\r\n", (2, True)),
    ("a head not yet whole", b"POST /api/v1/push HTTP/1.1\r\nHost: x\r\n", None),
    ("a body not yet whole", post(*OK, body=b"{"), None),
    ("nothing yet", b"", None),
    ("another route", post(*OK, body=b"{}", line="POST /api/v1/users/u/disconnect HTTP/1.1"), HAND_OVER),
    ("another method", post(*OK, body=b"{}", line="PUT /api/v1/push HTTP/1.1"), HAND_OVER),
    ("an absolute target", post(*OK, body=b"{}", line="POST http://x/api/v1/push HTTP/1.1"), HAND_OVER),
    ("a percent-encoded path", post(*OK, body=b"{}", line="POST /api/v1/%70ush HTTP/1.1"), HAND_OVER),
    ("HTTP/2.0", post(*OK, body=b"{}", line="POST /api/v1/push HTTP/2.0"), HAND_OVER),
    ("HTTP/0.9 style", b"POST /api/v1/push\r\n\r\n", HAND_OVER),
    ("chunked", post("Host: x", "Transfer-Encoding: chunked", body=b"2\r\n{}\r\n0\r\n\r\n"), HAND_OVER),
    ("chunked and a length", post(*OK, "Transfer-Encoding: chunked", body=b"{}"), HAND_OVER),
    ("Expect: 100-continue", post(*OK, "Expect: 100-continue"), HAND_OVER),
    ("no Content-Length", post("Host: x", body=b"{}"), HAND_OVER),
    ("two Content-Lengths", post(*OK, "Content-Length: 2", body=b"{}"), HAND_OVER),
    ("a signed length", post("Host: x", "Content-Length: +2", body=b"{}"), HAND_OVER),
    ("a non-ASCII digit", post("Host: x", "Content-Length: \u00b2", body=b"{}"), HAND_OVER),
    ("an empty length", post("Host: x", "Content-Length: ", body=b"{}"), HAND_OVER),
    ("a length of 19 digits", post("Host: x", "Content-Length: " + "0" * 19, body=b"{}"), HAND_OVER),
    ("a length of 5,000 digits", post("Host: x", "Content-Length: " + "9" * 5000), HAND_OVER),
    ("a body over the limit", post("Host: x", f"Content-Length: {MAX_BODY + 1}"), HAND_OVER),
    ("HTTP/1.1 without Host", post("Content-Length: 2", body=b"{}"), HAND_OVER),
    ("a malformed line", post(*OK, body=b"{}", line="POST  /api/v1/push HTTP/1.1"), HAND_OVER),
    ("a malformed field", post(*OK, "bad header", body=b"{}"), HAND_OVER),
    ("a control character", post(*OK, "Authorization: Bearer k\x01", body=b"{}"), HAND_OVER),
    ("an endless head", b"POST /api/v1/push HTTP/1.1\r\n" + b"X: y\r\n" * (MAX_HEAD_BYTES // 6), HAND_OVER),
])
def test_frame_request(name: str, buf: bytes, want: tuple[int, bool] | str | None) -> None:
    got = frame_request(buf, ROUTES, MAX_BODY)
    if isinstance(want, tuple):
        assert isinstance(got, Framed), name
        length, keep_alive = want
        assert got.end - got.body_start == length, name
        assert buf[got.end:] == buf[buf.index(b"\r\n\r\n") + 4 + length:], name
        assert got.keep_alive is keep_alive, name
    else:
        assert got == want, name


@pytest.mark.parametrize(("line", "connection", "want"), [
    ("POST / HTTP/1.1", None, True),
    ("POST / HTTP/1.1", "close", False),
    ("POST / HTTP/1.1", "keep-alive, Close", False),
    ("POST / HTTP/1.0", None, False),
    ("POST / HTTP/1.0", "keep-alive", True),
])
def test_keeps_alive(line: str, connection: str | None, want: bool) -> None:
    headers = [f"Connection: {connection}"] if connection else []
    assert keeps_alive(parse_head(post(*headers, line=line))) is want


@pytest.mark.parametrize(("version", "keep_alive", "connection"), [
    ((1, 1), True, None),
    ((1, 1), False, "close"),
    ((1, 0), True, "keep-alive"),
    ((1, 0), False, None),
])
def test_response(version: tuple[int, int], keep_alive: bool, connection: str | None) -> None:
    raw = response(401, b'{"a":1}', version=version, keep_alive=keep_alive, date="Sun, 06 Dec 2026 02:00:00 GMT",
                   headers=(("WWW-Authenticate", 'Bearer realm="wsnode"'),))
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    assert lines[0] == f"HTTP/{version[0]}.{version[1]} 401 Unauthorized"
    fields = dict(line.split(": ", 1) for line in lines[1:])
    assert fields["Content-Type"] == "application/json; charset=utf-8"
    assert fields["Content-Length"] == str(len(body)) and body == b'{"a":1}'
    assert fields["WWW-Authenticate"] == 'Bearer realm="wsnode"'
    assert fields["Date"] == "Sun, 06 Dec 2026 02:00:00 GMT"
    assert fields.get("Connection") == connection
