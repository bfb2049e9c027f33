"""RFC 6455 frames (pure, sans-I/O): the rules as data, a parser of client frames and the server's encoders.

The parser is fed whatever bytes the transport delivers and returns whole messages and control frames; it keeps
no buffer between calls unless a frame or message is incomplete, so an idle session holds only its few slots. A
violation raises `WebSocketError` carrying the close code to answer with (1002, 1007, 1009). The server's frames
are built here only (`text_frame` is re-exported by `wsnode.envelope`), one definition of the wire format.
"""

from __future__ import annotations

import base64
import hashlib
import struct
from dataclasses import dataclass

from wsnode.errors import WebSocketError

OP_CONTINUATION = 0x0
OP_TEXT = 0x1
OP_BINARY = 0x2
OP_CLOSE = 0x8
OP_PING = 0x9
OP_PONG = 0xA
DATA_OPCODES = frozenset({OP_CONTINUATION, OP_TEXT, OP_BINARY})
CONTROL_OPCODES = frozenset({OP_CLOSE, OP_PING, OP_PONG})
MAX_CONTROL_PAYLOAD = 125
FIN = 0x80
RSV_BITS = 0x70
MASK_BIT = 0x80

CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_PROTOCOL_ERROR = 1002
CLOSE_UNSUPPORTED = 1003
CLOSE_NO_STATUS = 1005  # reported when a close frame carries no code; never sent on the wire
CLOSE_ABNORMAL = 1006  # never sent on the wire
CLOSE_INVALID_DATA = 1007
CLOSE_POLICY = 1008
CLOSE_TOO_BIG = 1009
CLOSE_INTERNAL_ERROR = 1011
# Codes a peer may send (RFC 6455 section 7.4 and the IANA registry): 1004, 1005, 1006 and 1015 are reserved for
# reporting and never valid in a close frame; 3000-4999 belong to libraries and applications.
WIRE_CLOSE_CODES = frozenset({1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014})
APPLICATION_CLOSE_CODES = range(3000, 5000)

WEBSOCKET_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def valid_close_code(code: int) -> bool:
    """Whether a close frame may carry `code`."""
    return code in WIRE_CLOSE_CODES or code in APPLICATION_CLOSE_CODES


def accept_key(key: str) -> str:
    """Sec-WebSocket-Accept for a Sec-WebSocket-Key (RFC 6455 section 4.2.2)."""
    return base64.b64encode(hashlib.sha1(key.encode("ascii") + WEBSOCKET_GUID).digest()).decode("ascii")


def unmask(payload: bytes, mask: bytes) -> bytes:
    """XOR `payload` with the 4-byte `mask` repeated; one big-integer XOR instead of a Python loop per byte."""
    n = len(payload)
    if n == 0:
        return b""
    key = (mask * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(key, "big")).to_bytes(n, "big")


def encode_frame(opcode: int, payload: bytes = b"", *, fin: bool = True, mask: bytes | None = None) -> bytes:
    """One frame. Servers send unmasked frames (mask None); `mask` is there for clients (and the tests)."""
    n = len(payload)
    first = (FIN if fin else 0) | opcode
    mask_bit = MASK_BIT if mask is not None else 0
    if n < 126:
        head = bytes((first, mask_bit | n))
    elif n < 65536:
        head = struct.pack("!BBH", first, mask_bit | 126, n)
    else:
        head = struct.pack("!BBQ", first, mask_bit | 127, n)
    if mask is None:
        return head + payload
    return head + mask + unmask(payload, mask)


def text_frame(text: str) -> bytes:
    """`text` as one whole WebSocket text frame as a server sends it (RFC 6455: final, unmasked, uncompressed).

    Encoded once and written as is to every recipient of a broadcast, instead of once per session.
    """
    return encode_frame(OP_TEXT, text.encode())


def close_payload(code: int, reason: str = "") -> bytes:
    """The body of a close frame; the reason is cut (on a character boundary) to fit the 125-byte limit."""
    raw = reason.encode()[:MAX_CONTROL_PAYLOAD - 2].decode("utf-8", "ignore").encode()
    return struct.pack("!H", code) + raw


def close_frame(code: int, reason: str = "") -> bytes:
    """A server close frame."""
    return encode_frame(OP_CLOSE, close_payload(code, reason))


def parse_close(payload: bytes) -> tuple[int, str]:
    """(code, reason) of a received close frame: 1005 for an empty one; 1002 raised for a bad code or a 1-byte
    body, 1007 for a reason that is not UTF-8."""
    if not payload:
        return CLOSE_NO_STATUS, ""
    if len(payload) == 1:
        raise WebSocketError("a close frame with a 1-byte body", close_code=CLOSE_PROTOCOL_ERROR)
    code = struct.unpack_from("!H", payload)[0]
    if not valid_close_code(code):
        raise WebSocketError(f"close code {code} is not valid on the wire", close_code=CLOSE_PROTOCOL_ERROR)
    try:
        reason = payload[2:].decode("utf-8")
    except UnicodeDecodeError:
        raise WebSocketError("a close reason that is not UTF-8", close_code=CLOSE_INVALID_DATA) from None
    return code, reason


@dataclass(frozen=True, slots=True)
class Message:
    """A whole data message (fragments joined): `str` for text, `bytes` for binary."""

    data: str | bytes


@dataclass(frozen=True, slots=True)
class Control:
    """A ping, pong or close frame (close: `code` and `reason` parsed, 1005 when it had no body)."""

    opcode: int
    payload: bytes
    code: int = CLOSE_NO_STATUS
    reason: str = ""


Event = Message | Control


def _violation(reason: str, code: int = CLOSE_PROTOCOL_ERROR) -> WebSocketError:
    return WebSocketError(reason, close_code=code)


class FrameParser:
    """Client frames to events. `feed` returns the events the bytes complete; after a `WebSocketError` (or a
    close) the parser is spent and must not be fed again."""

    __slots__ = ("_buf", "_fragment_opcode", "_fragments", "_fragments_size", "max_message_bytes")

    def __init__(self, max_message_bytes: int) -> None:
        self.max_message_bytes = max_message_bytes
        self._buf = b""
        # Set only while a fragmented message is open, so an idle session keeps no list.
        self._fragments: list[bytes] | None = None
        self._fragments_size = 0
        self._fragment_opcode = 0

    def feed(self, data: bytes) -> list[Event]:
        buf = self._buf + data if self._buf else data
        events: list[Event] = []
        pos, end = 0, len(buf)
        while end - pos >= 2:
            first, second = buf[pos], buf[pos + 1]
            if first & RSV_BITS:
                raise _violation("reserved bits set without a negotiated extension")
            if not second & MASK_BIT:
                raise _violation("an unmasked client frame")
            opcode = first & 0x0F
            length = second & 0x7F
            head = 6
            if length == 126:
                head = 8
                if end - pos < 4:  # the mask may come later; the length alone may already refuse the frame
                    break
                length = struct.unpack_from("!H", buf, pos + 2)[0]
            elif length == 127:
                head = 14
                if end - pos < 10:
                    break
                length = struct.unpack_from("!Q", buf, pos + 2)[0]
                if length >> 63:
                    raise _violation("a frame length with the most significant bit set")
            self._check_header(opcode, bool(first & FIN), length)
            if end - pos < head + length:
                break
            mask = buf[pos + head - 4:pos + head]
            payload = unmask(buf[pos + head:pos + head + length], mask)
            pos += head + length
            event = self._frame(opcode, bool(first & FIN), payload)
            if event is not None:
                events.append(event)
                if isinstance(event, Control) and event.opcode == OP_CLOSE:
                    pos = end  # nothing after a close frame is read
                    break
        self._buf = buf[pos:] if pos < end else b""
        return events

    def _check_header(self, opcode: int, fin: bool, length: int) -> None:
        """Everything the header alone decides, before the payload is waited for (a 1009 need not be buffered)."""
        if opcode in CONTROL_OPCODES:
            if not fin:
                raise _violation("a fragmented control frame")
            if length > MAX_CONTROL_PAYLOAD:
                raise _violation(f"a control frame of {length} bytes (at most {MAX_CONTROL_PAYLOAD})")
            return
        if opcode not in DATA_OPCODES:
            raise _violation(f"unknown opcode {opcode:#x}")
        if opcode == OP_CONTINUATION:
            if self._fragments is None:
                raise _violation("a continuation frame outside a fragmented message")
        elif self._fragments is not None:
            raise _violation("a new message inside a fragmented one")
        if self._fragments_size + length > self.max_message_bytes:
            raise _violation(f"a message over {self.max_message_bytes} bytes", CLOSE_TOO_BIG)

    def _frame(self, opcode: int, fin: bool, payload: bytes) -> Event | None:
        if opcode == OP_CLOSE:
            code, reason = parse_close(payload)
            return Control(OP_CLOSE, payload, code, reason)
        if opcode in CONTROL_OPCODES:
            return Control(opcode, payload)
        if opcode == OP_CONTINUATION:
            assert self._fragments is not None  # _check_header refused it otherwise
            self._fragments.append(payload)
            self._fragments_size += len(payload)
            if not fin:
                return None
            opcode, payload = self._fragment_opcode, b"".join(self._fragments)
            self._fragments, self._fragments_size = None, 0
        elif not fin:
            self._fragments, self._fragments_size, self._fragment_opcode = [payload], len(payload), opcode
            return None
        if opcode == OP_BINARY:
            return Message(payload)
        try:
            return Message(payload.decode("utf-8"))
        except UnicodeDecodeError:
            raise _violation("a text message that is not UTF-8", CLOSE_INVALID_DATA) from None
