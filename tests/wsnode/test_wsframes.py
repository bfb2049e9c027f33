"""wsnode.wsframes: RFC 6455 frame rules as tables, the sans-I/O parser, and a hypothesis fuzz of the parser."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wsnode import envelope
from wsnode.errors import WebSocketError, WsnodeError
from wsnode.wsframes import (
    OP_BINARY,
    OP_CLOSE,
    OP_CONTINUATION,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    Control,
    FrameParser,
    Message,
    accept_key,
    close_frame,
    close_payload,
    encode_frame,
    parse_close,
    text_frame,
    unmask,
    valid_close_code,
)

MASK = b"\x37\xfa\x21\x3d"
LIMIT = 1024


def client(opcode: int, payload: bytes = b"", *, fin: bool = True) -> bytes:
    return encode_frame(opcode, payload, fin=fin, mask=MASK)


def feed_all(*chunks: bytes, limit: int = LIMIT) -> list[object]:
    parser = FrameParser(limit)
    events: list[object] = []
    for chunk in chunks:
        events.extend(parser.feed(chunk))
    return events


def test_envelope_re_exports_the_one_text_frame() -> None:
    assert envelope.text_frame is text_frame


def test_rfc_accept_key_example() -> None:
    # RFC 6455 section 1.3's worked example.
    assert accept_key("dGhlIHNhbXBsZSBub25jZQ==") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


@pytest.mark.parametrize("payload", [b"", b"a", b"abcd", b"abcde", bytes(range(256)) * 3])
def test_unmask_is_its_own_inverse(payload: bytes) -> None:
    assert unmask(unmask(payload, MASK), MASK) == payload
    assert unmask(payload, MASK) == bytes(b ^ MASK[i % 4] for i, b in enumerate(payload))


@pytest.mark.parametrize(("code", "valid"), [
    (999, False), (1000, True), (1001, True), (1002, True), (1003, True), (1004, False), (1005, False),
    (1006, False), (1007, True), (1008, True), (1009, True), (1010, True), (1011, True), (1012, True),
    (1013, True), (1014, True), (1015, False), (1016, False), (2999, False), (3000, True), (4008, True),
    (4999, True), (5000, False), (65535, False),
])
def test_close_code_validity(code: int, valid: bool) -> None:
    assert valid_close_code(code) is valid


@pytest.mark.parametrize(("payload", "expected"), [
    (b"", (1005, "")),
    (struct.pack("!H", 1000), (1000, "")),
    (struct.pack("!H", 4008) + "slow ✓".encode(), (4008, "slow ✓")),
])
def test_parse_close_accepts(payload: bytes, expected: tuple[int, str]) -> None:
    assert parse_close(payload) == expected


@pytest.mark.parametrize(("payload", "close_code"), [
    (b"\x03", 1002),
    (struct.pack("!H", 1005), 1002),
    (struct.pack("!H", 999), 1002),
    (struct.pack("!H", 1000) + b"\xff\xfe", 1007),
])
def test_parse_close_refuses(payload: bytes, close_code: int) -> None:
    with pytest.raises(WebSocketError) as info:
        parse_close(payload)
    assert info.value.close_code == close_code


def test_close_payload_cuts_the_reason_on_a_character_boundary() -> None:
    body = close_payload(1000, "é" * 100)
    assert len(body) <= 125
    assert parse_close(body) == (1000, "é" * 61)
    assert close_frame(4008, "x")[:2] == bytes((0x88, 3))


@pytest.mark.parametrize(("opcode", "n", "header"), [
    (OP_TEXT, 0, 2), (OP_TEXT, 125, 2), (OP_BINARY, 126, 4), (OP_TEXT, 65535, 4), (OP_TEXT, 65536, 10),
])
def test_encode_frame_lengths_and_server_frames_unmasked(opcode: int, n: int, header: int) -> None:
    wire = encode_frame(opcode, b"x" * n)
    assert len(wire) == header + n
    assert wire[0] == 0x80 | opcode and not wire[1] & 0x80
    assert FrameParser(1 << 20).feed(client(opcode, b"x" * n)) == [
        Message("x" * n if opcode == OP_TEXT else b"x" * n)]


# Each row: the client's bytes, and what the parser gives: events, or the close code it raises.
ACCEPTED: list[tuple[str, list[bytes], list[object]]] = [
    ("text", [client(OP_TEXT, b"hi")], [Message("hi")]),
    ("binary", [client(OP_BINARY, b"\x00\xff")], [Message(b"\x00\xff")]),
    ("utf-8 text", [client(OP_TEXT, "é✓".encode())], [Message("é✓")]),
    ("two frames in one read", [client(OP_TEXT, b"a") + client(OP_TEXT, b"b")], [Message("a"), Message("b")]),
    ("byte by byte", [bytes([b]) for b in client(OP_TEXT, b"x" * 300)], [Message("x" * 300)]),
    ("ping", [client(OP_PING, b"p")], [Control(OP_PING, b"p")]),
    ("pong", [client(OP_PONG)], [Control(OP_PONG, b"")]),
    ("close without body", [client(OP_CLOSE)], [Control(OP_CLOSE, b"", 1005, "")]),
    ("close with code", [client(OP_CLOSE, struct.pack("!H", 1000) + b"bye")],
     [Control(OP_CLOSE, struct.pack("!H", 1000) + b"bye", 1000, "bye")]),
    ("nothing read after a close", [client(OP_CLOSE) + b"\xff\xff\xff"], [Control(OP_CLOSE, b"", 1005, "")]),
    ("fragments", [client(OP_TEXT, b"he", fin=False), client(OP_CONTINUATION, b"l", fin=False),
                   client(OP_CONTINUATION, b"lo")], [Message("hello")]),
    ("ping between fragments", [client(OP_TEXT, b"a", fin=False) + client(OP_PING, b"!")
                                + client(OP_CONTINUATION, b"b")], [Control(OP_PING, b"!"), Message("ab")]),
    ("UTF-8 split across fragments", [client(OP_TEXT, "é".encode()[:1], fin=False),
                                      client(OP_CONTINUATION, "é".encode()[1:])], [Message("é")]),
    ("binary fragments", [client(OP_BINARY, b"\x01", fin=False), client(OP_CONTINUATION, b"\x02")],
     [Message(b"\x01\x02")]),
    ("exactly the limit", [client(OP_TEXT, b"x" * LIMIT)], [Message("x" * LIMIT)]),
    ("empty text", [client(OP_TEXT)], [Message("")]),
]


@pytest.mark.parametrize(("name", "chunks", "events"), ACCEPTED, ids=[row[0] for row in ACCEPTED])
def test_parser_accepts(name: str, chunks: list[bytes], events: list[object]) -> None:
    assert feed_all(*chunks) == events


REFUSED: list[tuple[str, bytes, int]] = [
    ("unmasked", encode_frame(OP_TEXT, b"hi"), 1002),
    ("rsv1 without extension", bytes((0xC1,)) + client(OP_TEXT, b"hi")[1:], 1002),
    ("rsv3", bytes((0x91,)) + client(OP_TEXT, b"hi")[1:], 1002),
    ("unknown data opcode", client(0x3, b"x"), 1002),
    ("unknown control opcode", client(0xB), 1002),
    ("control frame over 125", client(OP_PING, b"x" * 126), 1002),
    ("fragmented control frame", client(OP_PING, b"x", fin=False), 1002),
    ("continuation first", client(OP_CONTINUATION, b"x"), 1002),
    ("new message inside fragments", client(OP_TEXT, b"a", fin=False) + client(OP_TEXT, b"b"), 1002),
    ("bad utf-8", client(OP_TEXT, b"\xff\xfe"), 1007),
    ("truncated utf-8", client(OP_TEXT, "é".encode()[:1]), 1007),
    ("bad utf-8 in fragments", client(OP_TEXT, b"a", fin=False) + client(OP_CONTINUATION, b"\xc0"), 1007),
    ("over the limit", client(OP_TEXT, b"x" * (LIMIT + 1)), 1009),
    ("fragments over the limit", client(OP_TEXT, b"x" * LIMIT, fin=False) + client(OP_CONTINUATION, b"x"), 1009),
    ("over the limit by header alone", bytes((0x81, 0xFF)) + struct.pack("!Q", 1 << 40), 1009),
    ("64-bit length with top bit", bytes((0x81, 0xFF)) + struct.pack("!Q", 1 << 63), 1002),
    ("close with 1-byte body", client(OP_CLOSE, b"\x03"), 1002),
    ("close with 1006", client(OP_CLOSE, struct.pack("!H", 1006)), 1002),
    ("close with bad reason", client(OP_CLOSE, struct.pack("!H", 1000) + b"\xff"), 1007),
]


@pytest.mark.parametrize(("name", "wire", "close_code"), REFUSED, ids=[row[0] for row in REFUSED])
def test_parser_refuses_with_its_close_code(name: str, wire: bytes, close_code: int) -> None:
    with pytest.raises(WebSocketError) as info:
        feed_all(wire)
    assert info.value.close_code == close_code
    assert isinstance(info.value, WsnodeError)


def test_idle_parser_keeps_no_buffer() -> None:
    parser = FrameParser(LIMIT)
    parser.feed(client(OP_TEXT, b"hi"))
    assert parser._buf == b"" and parser._fragments is None
    assert not hasattr(parser, "__dict__")


frames = st.builds(
    lambda op, payload, fin: client(op, payload, fin=fin),
    st.sampled_from([OP_CONTINUATION, OP_TEXT, OP_BINARY, OP_PING, OP_PONG, OP_CLOSE, 0x3, 0xB]),
    st.binary(max_size=300),
    st.booleans(),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(frames, max_size=6), st.lists(st.integers(min_value=1, max_value=64), max_size=8),
       st.binary(max_size=40))
def test_fuzz_parser_raises_only_websocket_errors(wires: list[bytes], cuts: list[int], noise: bytes) -> None:
    """Any byte stream, cut anywhere: events or a WebSocketError with a close code a peer may receive."""
    stream = b"".join(wires) + noise
    parser = FrameParser(LIMIT)
    pos = 0
    try:
        for cut in [*cuts, len(stream)]:
            for event in parser.feed(stream[pos:pos + cut]):
                assert isinstance(event, Message | Control)
            pos += cut
    except WebSocketError as exc:
        assert exc.close_code in (1002, 1007, 1009)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(max_size=200), min_size=1, max_size=5), st.integers(min_value=1, max_value=50))
def test_fuzz_fragmented_text_round_trips(parts: list[str], chunk: int) -> None:
    wire = b"".join(client(OP_TEXT if i == 0 else OP_CONTINUATION, p.encode(), fin=i == len(parts) - 1)
                    for i, p in enumerate(parts))
    parser = FrameParser(1 << 20)
    events: list[object] = []
    for i in range(0, len(wire), chunk):
        events.extend(parser.feed(wire[i:i + chunk]))
    assert events == [Message("".join(parts))]
