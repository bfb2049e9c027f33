"""Fuzzing the head parser and the chunk scanner against h11's verdicts (issue 13).

Requests and chunked bodies are built from the grammar, then mutated with the bytes that matter to framing (CR, LF,
space, tab, colon, comma, semicolon, NUL, digits, non-ASCII). Whatever the gateway accepts, h11 must accept and read
the same way: the same method, target, headers and body framing; a chunked body ending at the same byte. The gateway
may refuse more than h11 (it is stricter by design), and it never fails with anything but its own errors.
"""

from __future__ import annotations

import h11
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.errors import GatewayError
from gateway.proxy.httpparse import ChunkedScanner, Framing, parse_request_head, request_framing

FUZZ = settings(max_examples=400, deadline=None)
DANGEROUS = [b"\r", b"\n", b"\r\n", b" ", b"\t", b":", b",", b";", b"\x00", b"\x0b", b"0", b"5", b"f", b"-", b"+",
             b"\x80", b"\xb2", b"\xff", b"=", b'"', b"\\"]

names = st.sampled_from([b"Host", b"Content-Length", b"Transfer-Encoding", b"Connection", b"X-A", b"Expect",
                         b"Upgrade", b"content-length", b"TRANSFER-ENCODING", b"Trailer", b"TE", b"Keep-Alive"])
values = st.one_of(
    st.sampled_from([b"gw", b"5", b"0", b"chunked", b"Chunked", b"gzip, chunked", b"close", b"keep-alive",
                     b"content-length", b"Transfer-Encoding", b"upgrade", b"100-continue", b"5, 5", b"007",
                     b"\xb2", b"", b" 5 ", b"sec-websocket-key", b"host"]),
    st.binary(max_size=8))
# The target's bytes are limited to what both grammars allow: the gateway also passes raw UTF-8 targets on (which
# h11 refuses), a choice about URIs rather than about where a message ends.
targets = st.sampled_from([b"/", b"/a", b"/a?b=c", b"/%20", b"*", b"http://x/", b"/a b"])


def mutate(data: bytes, edits: list[tuple[int, int, bytes]]) -> bytes:
    """`data` with each (position, length to drop, bytes to insert) applied in turn."""
    for position, drop, insert in edits:
        at = position % (len(data) + 1)
        data = data[:at] + insert + data[at + drop:]
    return data


edits = st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 2), st.sampled_from(DANGEROUS)), max_size=3)


@st.composite
def request_heads(draw: st.DrawFn) -> bytes:
    method = draw(st.sampled_from([b"GET", b"POST", b"PUT", b"get", b"G T"]))
    version = draw(st.sampled_from([b"HTTP/1.1", b"HTTP/1.0", b"HTTP/1.2", b"HTTP/2.0"]))
    fields = draw(st.lists(st.tuples(names, values), max_size=6))
    if draw(st.booleans()):
        fields.insert(0, (b"Host", b"gw"))
    lines = [method + b" " + draw(targets) + b" " + version, *(name + b": " + value for name, value in fields)]
    return mutate(b"\r\n".join(lines), draw(edits))


def h11_request(head: bytes) -> tuple[h11.Request | None, str]:
    """h11's reading of a head: the request, or None and why."""
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(head + b"\r\n\r\n")
    try:
        event = conn.next_event()
    except h11.RemoteProtocolError as error:
        return None, str(error)
    return (event, "") if isinstance(event, h11.Request) else (None, f"no request: {event!r}")


def h11_framing(request: h11.Request) -> tuple[Framing, int]:
    """How h11 frames the body (Transfer-Encoding wins, as in h11's _body_framing)."""
    headers = dict(request.headers)
    if b"transfer-encoding" in headers:
        return Framing.CHUNKED, 0
    length = int(headers.get(b"content-length", b"0"))
    return (Framing.LENGTH, length) if length else (Framing.NONE, 0)


@FUZZ
@given(request_heads())
def test_head_parser_accepts_nothing_h11_reads_otherwise(head: bytes) -> None:
    if b"\r\n\r\n" in head:
        return  # the connection reads up to the first blank line: this would be two heads
    try:
        parsed = parse_request_head(head)
        framing = request_framing(parsed)
    except GatewayError:
        return  # refused: always allowed
    if not parsed.target.isascii():
        # A mutation put a non-ASCII byte into the target: the gateway passes raw UTF-8 targets on and h11 refuses
        # them, a choice about URIs that `targets` above keeps out of this comparison (it is about framing).
        return
    request, why = h11_request(head)
    assert request is not None, f"the gateway accepted what h11 refuses ({why}): {head!r}"
    assert parsed.method.encode("latin-1") == request.method
    assert parsed.target.encode("latin-1") == request.target
    # h11 folds repeated lengths into one and lower-cases the coding: those two are compared as framing.
    framing_names = ("content-length", "transfer-encoding")
    ours = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in parsed.headers
            if k.lower() not in framing_names]
    assert ours == [(k, v) for k, v in request.headers if k.decode() not in framing_names]
    assert framing == h11_framing(request)


@st.composite
def chunked_bodies(draw: st.DrawFn) -> bytes:
    parts = []
    for chunk in draw(st.lists(st.binary(min_size=1, max_size=12), max_size=3)):
        size = draw(st.sampled_from([f"{len(chunk):x}", f"{len(chunk):X}", f"00{len(chunk):x}"])).encode()
        extension = draw(st.sampled_from([b"", b";a", b";a=b", b';a="x y"', b"; a = b"]))
        parts.append(size + extension + b"\r\n" + chunk + b"\r\n")
    parts.append(draw(st.sampled_from([b"0", b"000", b"0;last"])) + b"\r\n")
    for name, value in draw(st.lists(st.tuples(st.sampled_from([b"X-T", b"Y"]), values), max_size=2)):
        parts.append(name + b": " + value + b"\r\n")
    parts.append(b"\r\n")
    return mutate(b"".join(parts), draw(edits)) + b"NEXT"


def h11_body_end(body: bytes) -> tuple[int | None, str]:
    """Where h11's chunked reader ends the body (bytes consumed), None if it refuses or wants more."""
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(b"POST / HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n" + body)
    try:
        while True:
            event = conn.next_event()
            if isinstance(event, h11.EndOfMessage):
                return len(body) - len(conn.trailing_data[0]), ""
            if event is h11.NEED_DATA:
                return None, "wants more"
    except h11.RemoteProtocolError as error:
        return None, str(error)


def scan(body: bytes, split: int) -> int | None:
    """The gateway scanner's end of `body` fed in two pieces; None when it wants more; raises GatewayError."""
    scanner = ChunkedScanner()
    used = scanner.feed(body[:split])
    if not scanner.done:
        used += scanner.feed(body[split:])
    return used if scanner.done else None


@FUZZ
@given(chunked_bodies(), st.integers(0, 200))
def test_chunk_scanner_ends_bodies_where_h11_does(body: bytes, split: int) -> None:
    split %= len(body) + 1
    try:
        whole = scan(body, len(body))
    except GatewayError:
        whole = -1
    try:
        pieces = scan(body, split)
    except GatewayError:
        pieces = -1
    assert whole == pieces, "the verdict depends on how the bytes arrive"
    if whole == -1:
        return  # refused: always allowed
    end, why = h11_body_end(body)
    if whole is None:
        assert end is None, f"h11 ends the body at {end}, the gateway waits for more: {body!r}"
    else:
        assert end == whole, f"gateway ends at {whole}, h11 {why or f'at {end}'}: {body!r}"
