"""Request/response heads and body framing (pure)."""

from __future__ import annotations

import pytest

from gateway.errors import BadGateway, BadRequest, HeadTooLarge
from gateway.proxy.httpparse import (
    ChunkedScanner,
    Framing,
    RequestHead,
    ResponseHead,
    parse_request_head,
    parse_response_head,
    request_framing,
    response_framing,
    serialize_head,
    split_head,
)


def test_parse_request_head_reads_line_and_headers() -> None:
    head = parse_request_head(b"GET /a%20b?x=1&y=2 HTTP/1.1\r\nHost: gw\r\nX-A:  spaced  \r\nX-A: two")
    assert (head.method, head.path, head.query, head.version) == ("GET", "/a%20b", "x=1&y=2", "HTTP/1.1")
    assert head.headers == (("Host", "gw"), ("X-A", "spaced"), ("X-A", "two"))
    assert head.header("x-a") == "spaced"


@pytest.mark.parametrize("raw", [
    b"GET /\r\nHost: a",
    b"GET  / HTTP/1.1",
    b"GET / HTTP/2.0",
    b"GET http://evil/ HTTP/1.1",
    b"G@T / HTTP/1.1",
    b"GET / HTTP/1.1\r\nBad Header: x",
    b"GET / HTTP/1.1\r\n folded: x",
    b"GET / HTTP/1.1\r\nNoColon",
    b"GET / HTTP/1.1\r\nX: a\x00b",
    b"GET /a b HTTP/1.1",
    # What an instance could frame otherwise: a Connection header naming framing or handshake headers (issue 13,
    # item 1: the proxy dropped Content-Length yet relayed the body), non-ASCII lengths, both framings.
    b"POST / HTTP/1.1\r\nConnection: content-length\r\nContent-Length: 5",
    b"POST / HTTP/1.1\r\nConnection: keep-alive, Content-Length\r\nContent-Length: 5",
    b"POST / HTTP/1.1\r\nConnection: transfer-encoding\r\nTransfer-Encoding: chunked",
    b"GET / HTTP/1.1\r\nHost: a\r\nConnection: host",
    b"GET / HTTP/1.1\r\nConnection: Upgrade, Sec-WebSocket-Key\r\nUpgrade: websocket",
    b"GET / HTTP/1.1\r\nConnection: close\r\nConnection: sec-websocket-protocol",
    b"POST / HTTP/1.1\r\nContent-Length: \xc2\xb2",
    b"POST / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked",
])
def test_parse_request_head_refuses_malformed(raw: bytes) -> None:
    with pytest.raises(BadRequest):
        parse_request_head(raw)


@pytest.mark.parametrize(("version", "connection", "keep"), [
    ("HTTP/1.1", None, True), ("HTTP/1.1", "close", False), ("HTTP/1.1", "Keep-Alive, Close", False),
    ("HTTP/1.0", None, False), ("HTTP/1.0", "keep-alive", True),
])
def test_keep_alive_follows_version_and_connection(version: str, connection: str | None, keep: bool) -> None:
    headers = (("Connection", connection),) if connection else ()
    assert RequestHead("GET", "/", version, headers).keep_alive is keep


def test_parse_response_head() -> None:
    head = parse_response_head(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nSet-Cookie: a=1")
    assert (head.status, head.reason) == (101, "Switching Protocols")
    assert head.header("set-cookie") == "a=1"
    assert parse_response_head(b"HTTP/1.1 204").reason == ""


@pytest.mark.parametrize("raw", [b"HTTP/1.1 2000 OK", b"SSH-2.0-OpenSSH", b"HTTP/1.1 abc x"])
def test_parse_response_head_refuses_garbage(raw: bytes) -> None:
    with pytest.raises(BadGateway):
        parse_response_head(raw)


def test_serialize_head_round_trips() -> None:
    raw = serialize_head("GET /x HTTP/1.1", (("Host", "h"), ("A", "b")))
    assert raw == b"GET /x HTTP/1.1\r\nHost: h\r\nA: b\r\n\r\n"
    assert parse_request_head(raw[:-4]).headers == (("Host", "h"), ("A", "b"))


@pytest.mark.parametrize(("headers", "expected"), [
    ((), (Framing.NONE, 0)),
    ((("Content-Length", "12"),), (Framing.LENGTH, 12)),
    ((("Content-Length", "0"),), (Framing.NONE, 0)),
    ((("Transfer-Encoding", "chunked"),), (Framing.CHUNKED, 0)),
    ((("Transfer-Encoding", "Chunked"),), (Framing.CHUNKED, 0)),
    ((("Content-Length", "5"), ("Content-Length", "5")), (Framing.LENGTH, 5)),
    ((("Content-Length", "007"),), (Framing.LENGTH, 7)),
])
def test_request_framing(headers: tuple[tuple[str, str], ...], expected: tuple[Framing, int]) -> None:
    assert request_framing(RequestHead("POST", "/", "HTTP/1.1", headers)) == expected


@pytest.mark.parametrize("headers", [
    (("Content-Length", "5"), ("Transfer-Encoding", "chunked")),
    (("Content-Length", "5"), ("Content-Length", "6")),
    (("Content-Length", "-1"),),
    (("Content-Length", "1e3"),),
    (("Transfer-Encoding", "chunked, gzip"),),
    # A coding list, or two Transfer-Encoding headers: an instance may honour another coding (h11 refuses too).
    (("Transfer-Encoding", "gzip, chunked"),),
    (("Transfer-Encoding", "chunked"), ("Transfer-Encoding", "chunked")),
    (("Content-Length", "5, 5"),),
    (("Content-Length", "²"),),  # isdigit() but int() fails: was a 500
    (("Content-Length", "٣"),),  # isdigit() and int() reads 3: an instance reads no length at all
    (("Content-Length", " "),),
    (("Content-Length", "1" * 19),),
])
def test_request_framing_refuses_smuggling_shapes(headers: tuple[tuple[str, str], ...]) -> None:
    with pytest.raises(BadRequest):
        request_framing(RequestHead("POST", "/", "HTTP/1.1", headers))


def test_request_framing_refuses_transfer_encoding_in_http_1_0() -> None:
    with pytest.raises(BadRequest):
        request_framing(RequestHead("POST", "/", "HTTP/1.0", (("Transfer-Encoding", "chunked"),)))


@pytest.mark.parametrize("connection", ["Upgrade", "keep-alive", "close", "X-Custom, TE", "connection"])
def test_parse_request_head_accepts_harmless_connection_options(connection: str) -> None:
    head = parse_request_head(f"GET / HTTP/1.1\r\nHost: a\r\nConnection: {connection}\r\nX-Custom: 1".encode())
    assert head.header("connection") == connection


@pytest.mark.parametrize(("method", "status", "headers", "expected"), [
    ("GET", 200, (), (Framing.UNTIL_CLOSE, 0)),
    ("GET", 200, (("Content-Length", "0"),), (Framing.NONE, 0)),
    ("HEAD", 200, (("Content-Length", "10"),), (Framing.NONE, 0)),
    ("GET", 204, (), (Framing.NONE, 0)),
    ("GET", 304, (("Content-Length", "10"),), (Framing.NONE, 0)),
    ("GET", 101, (), (Framing.NONE, 0)),
    ("GET", 200, (("Transfer-Encoding", "chunked"),), (Framing.CHUNKED, 0)),
    ("GET", 403, (("Content-Length", "9"),), (Framing.LENGTH, 9)),
])
def test_response_framing(method: str, status: int, headers: tuple[tuple[str, str], ...],
                          expected: tuple[Framing, int]) -> None:
    assert response_framing(method, ResponseHead("HTTP/1.1", status, "", headers)) == expected


BODY = b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nTrailer: x\r\n\r\n"


@pytest.mark.parametrize("split", [1, 2, 3, 7, len(BODY)])
def test_chunked_scanner_finds_the_end_across_any_split(split: int) -> None:
    scanner = ChunkedScanner()
    consumed = 0
    data = BODY + b"NEXT"
    for start in range(0, len(data), split):
        piece = data[start:start + split]
        used = scanner.feed(piece)
        consumed += used
        if scanner.done:
            break
        assert used == len(piece)
    assert scanner.done
    assert consumed == len(BODY)


@pytest.mark.parametrize("raw", [
    b"zz\r\n", b"0x5\r\n", b"1_0\r\n", b"-5\r\n",
    b"5\nhello\r\n0\r\n\r\n",  # bare LF after the size
    b"5\r\nhello\n0\r\n\r\n",  # bare LF after the data
    b"5\r\nhelloXX0\r\n\r\n",  # no CRLF after the data
    b"5\r\nhello\r\n0\r\n\n",  # bare LF ending the trailer section (issue 13, item 4)
    b"5\rX\r\n", b"5;a\rb\r\n",  # bare CR
    b"5 \r\n", b" 5\r\n", b"5 ;a=b\r\n", b"5;\r\n", b"5;a=\r\n", b"5;a=\"b\r\n",
    b"\xd9\xa3\r\n",  # non-ASCII digit
    b"00000000000000005\r\n",  # 17 hex digits
    b"ffffffffffffffff\r\n",  # past 2**62
    b"0\r\nBad Trailer: x\r\n\r\n", b"0\r\n folded\r\n\r\n", b"0\r\nContent-Length: 5\r\n\r\n",
    b"0\r\nX: a\x01b\r\n\r\n",
])
def test_chunked_scanner_refuses_bad_framing(raw: bytes) -> None:
    # Fed whole and byte by byte: the verdict must not depend on how the bytes arrive.
    with pytest.raises(BadRequest):
        ChunkedScanner().feed(raw + b"\r\n\r\n")
    scanner = ChunkedScanner()
    with pytest.raises(BadRequest):
        for index in range(len(raw) + 4):
            scanner.feed((raw + b"\r\n\r\n")[index:index + 1])


@pytest.mark.parametrize("raw", [
    b"5\r\nhello\r\n0\r\n\r\n", b"0005\r\nhello\r\n000\r\n\r\n", b"5;a=b;c;d=\"x\\\"y\"\r\nhello\r\n0\r\n\r\n",
    b"A\r\n0123456789\r\n0\r\nX-Sum: 1\r\nY:\r\n\r\n",
])
def test_chunked_scanner_accepts_strict_bodies(raw: bytes) -> None:
    scanner = ChunkedScanner()
    assert scanner.feed(raw + b"NEXT") == len(raw) and scanner.done
    scanner = ChunkedScanner()
    assert sum(scanner.feed(raw[i:i + 1]) for i in range(len(raw))) == len(raw) and scanner.done


def test_chunked_scanner_refuses_endless_size_line() -> None:
    with pytest.raises(BadGateway):
        ChunkedScanner(BadGateway).feed(b"1" * 5000)


@pytest.mark.parametrize(("buffer", "max_bytes", "expected"), [
    (b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", 64, (b"GET / HTTP/1.1\r\nHost: a", 27)),
    (b"GET / HTTP/1.1\r\n\r\nbody", 64, (b"GET / HTTP/1.1", 18)),  # what follows the head stays
    (b"\r\n\r\nGET / HTTP/1.1\r\n\r\n", 64, (b"GET / HTTP/1.1", 22)),  # blank lines before a head are taken too
    (b"GET / HTTP/1.1\r\n\r\n", 18, (b"GET / HTTP/1.1", 18)),  # exactly max_bytes with its blank line
    (b"\r\nGET / HTTP/1.1\r\n\r\n", 18, (b"GET / HTTP/1.1", 20)),  # the blank lines do not count to max_bytes
    (b"GET / HTTP/1.1\r\nHost: a\r\n", 64, None),
    (b"GET / HTTP/1.1\r\nHost: a\r\n", 4, None),  # incomplete: the caller judges its size
    (b"", 64, None),
    (b"\r\n", 64, None),
    (bytearray(b"HTTP/1.1 200 OK\r\n\r\n"), 64, (b"HTTP/1.1 200 OK", 19)),
])
def test_split_head(buffer: bytes, max_bytes: int, expected: tuple[bytes, int] | None) -> None:
    before = bytes(buffer)
    assert split_head(buffer, max_bytes) == expected
    assert bytes(buffer) == before  # pure: the caller removes what was used


@pytest.mark.parametrize(("buffer", "max_bytes"), [
    (b"GET / HTTP/1.1\r\n\r\n", 17),
    (b"\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n", 20),
])
def test_split_head_refuses_a_complete_head_over_max_bytes(buffer: bytes, max_bytes: int) -> None:
    with pytest.raises(HeadTooLarge) as raised:
        split_head(buffer, max_bytes)
    assert raised.value.status == 431
