"""HTTP/1.x heads and body framing (pure): parse request and response heads, find where a body ends.

Heads are parsed strictly (RFC 9112): CRLF line ends, token header names, no obsolete line folding, no control
characters in values. A request that the gateway and an instance could frame differently is refused with 400
(request smuggling): both `Content-Length` and `Transfer-Encoding`, conflicting or non-ASCII lengths, a transfer
coding other than a single `chunked`, `Transfer-Encoding` in HTTP/1.0, or a `Connection` header naming a framing
or handshake header (the proxy would drop that header yet still frame the body by it). Bodies are not decoded:
`ChunkedScanner` only finds where a chunked body ends (strictly, RFC 9112 section 7.1), so the proxy can relay it
byte for byte.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum

from gateway.errors import BadGateway, BadRequest, GatewayError, HeadTooLarge
from gateway.model import Headers

HEAD_END = b"\r\n\r\n"
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_VALUE_BAD = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
_TARGET = re.compile(rb"[\x21-\x7e\x80-\xff]+")
_VERSION = re.compile(rb"HTTP/1\.[01]")
_LENGTH = re.compile(r"[0-9]{1,18}")  # ASCII digits only: str.isdigit() also takes "²" and "٣"
# Headers a `Connection` header may not name: dropping them as hop-by-hop would change how the body or the
# handshake is read upstream while the gateway still reads it by them.
_UNNAMEABLE = frozenset({"content-length", "transfer-encoding", "host"})
# The same rules over the head decoded as latin-1 (one byte, one character), in one pass: a valid request line
# and header block (every line ending in CRLF once the caller's CRLF is put back). Whatever does not match goes
# through the line-by-line checks, which say what is wrong.
_FIELDS_TEXT = r"(?:[!#$%&'*+\-.^_`|~0-9A-Za-z]+:[\t\x20-\x7e\x80-\xff]*\r\n)*"
_REQUEST_TEXT = re.compile(
    r"([!#$%&'*+\-.^_`|~0-9A-Za-z]+) (/[\x21-\x7e\x80-\xff]*) (HTTP/1\.[01])\r\n(" + _FIELDS_TEXT + ")")
_HEADER_BLOCK_TEXT = re.compile(_FIELDS_TEXT)
_STATUS_TEXT = re.compile(r"(HTTP/1\.[01]) ([0-9]{3})(?: (.*))?", re.DOTALL)


@dataclass(frozen=True, slots=True)
class RequestHead:
    """A parsed request line and headers; `target` as received (origin form, percent-encoded)."""

    method: str
    target: str
    version: str
    headers: Headers

    @property
    def path(self) -> str:
        return self.target.partition("?")[0]

    @property
    def query(self) -> str:
        return self.target.partition("?")[2]

    def header(self, name: str) -> str | None:
        """The first value of `name`."""
        lname = name.lower()
        for key, value in self.headers:
            if key.lower() == lname:
                return value
        return None

    @property
    def keep_alive(self) -> bool:
        """Whether the client wants the connection kept after the response."""
        tokens = {t.strip().lower() for k, v in self.headers if k.lower() == "connection" for t in v.split(",")}
        if self.version == "HTTP/1.0":
            return "keep-alive" in tokens
        return "close" not in tokens


@dataclass(frozen=True, slots=True)
class ResponseHead:
    """A parsed status line and headers."""

    version: str
    status: int
    reason: str
    headers: Headers

    def header(self, name: str) -> str | None:
        """The first value of `name`."""
        lname = name.lower()
        for key, value in self.headers:
            if key.lower() == lname:
                return value
        return None


def _split_fields(block: str) -> Headers:
    """(name, value) pairs of a header block already checked valid, each line ending in CRLF."""
    if not block:
        return ()
    fields = []
    for line in block[:-2].split("\r\n"):
        name, _, value = line.partition(":")
        fields.append((name, value.strip(" \t")))
    return tuple(fields)


def _headers(block: bytes, error: type[GatewayError]) -> Headers:
    """The header lines of a head (everything after its first line)."""
    if not block:
        return ()
    text = block.decode("latin-1") + "\r\n"
    if _HEADER_BLOCK_TEXT.fullmatch(text):
        # Fast path: the whole block is valid, so split it without checking line by line.
        return _split_fields(text)
    result: list[tuple[str, str]] = []
    for line in block.split(b"\r\n"):
        name, sep, value = line.partition(b":")
        if not sep or not _TOKEN.fullmatch(name):
            raise error("malformed header line")  # never its text: error messages are logged, it may hold a token
        value = value.strip(b" \t")
        if _VALUE_BAD.search(value):
            raise error(f"control character in header {name.decode('latin-1')}")
        result.append((name.decode("latin-1"), value.decode("latin-1")))
    return tuple(result)


def parse_request_head(data: bytes) -> RequestHead:
    """Parse a request head (everything before the blank line); raises BadRequest."""
    found = _REQUEST_TEXT.fullmatch(data.decode("latin-1") + "\r\n")
    if found is not None:
        method, target, version, block = found.groups()
        head = RequestHead(method, target, version, _split_fields(block))
    else:
        head = _parse_request_slowly(data)
    _check_request_fields(head)
    return head


def _parse_request_slowly(data: bytes) -> RequestHead:
    """The line-by-line reading of a head the one-pass pattern refused: says what is wrong."""
    first, _, block = data.partition(b"\r\n")
    parts = first.split(b" ")
    if len(parts) != 3:
        raise BadRequest("malformed request line")
    method, target, version = parts
    if not _TOKEN.fullmatch(method) or not _TARGET.fullmatch(target) or not _VERSION.fullmatch(version):
        raise BadRequest("malformed request line")
    if not target.startswith(b"/"):
        raise BadRequest("only origin-form request targets are accepted")
    return RequestHead(method.decode("ascii"), target.decode("latin-1"), version.decode("ascii"),
                       _headers(block, BadRequest))


def _check_request_fields(head: RequestHead) -> None:
    """Refuse what an instance could read otherwise than the gateway: a `Connection` header naming a framing or
    handshake header, a body whose framing `request_framing` refuses, and a missing (HTTP/1.1) or repeated `Host`
    (RFC 9112 section 3.2: routes match the first, an instance might read the other)."""
    names = [key.lower() for key, _ in head.headers]
    hosts = names.count("host")
    if hosts > 1 or (hosts == 0 and head.version == "HTTP/1.1"):
        raise BadRequest("an HTTP/1.1 request has exactly one Host header")
    if "connection" in names:
        for name, (_, value) in zip(names, head.headers, strict=True):
            if name != "connection":
                continue
            for token in value.split(","):
                token = token.strip().lower()
                if token in _UNNAMEABLE or token.startswith("sec-websocket-"):
                    named = token if token in _UNNAMEABLE else "Sec-WebSocket-*"  # a fixed text: it is logged
                    raise BadRequest(f"Connection header names {named}")
    if "content-length" in names or "transfer-encoding" in names:
        _request_framing(head.version, head.headers)


def parse_response_head(data: bytes) -> ResponseHead:
    """Parse a response head from an instance; raises BadGateway."""
    status_line, _, field_lines = data.decode("latin-1").partition("\r\n")
    status = _STATUS_TEXT.fullmatch(status_line)
    if status is not None:
        fields = field_lines + "\r\n" if field_lines else ""
        if _HEADER_BLOCK_TEXT.fullmatch(fields):
            version, code, reason = status.groups()
            return ResponseHead(version, int(code), reason or "", _split_fields(fields))
    first, _, block = data.partition(b"\r\n")
    version, _, rest = first.partition(b" ")
    code, _, reason = rest.partition(b" ")
    if not _VERSION.fullmatch(version) or len(code) != 3 or not code.isdigit():
        raise BadGateway("malformed status line from instance")
    return ResponseHead(version.decode("ascii"), int(code), reason.decode("latin-1"), _headers(block, BadGateway))


def split_head(buffer: bytes | bytearray, max_bytes: int) -> tuple[bytes, int] | None:
    """The head at the start of `buffer` without its blank line, and how many bytes of `buffer` it takes up (the
    CRLFs before it included, RFC 9112 section 2.2); None while it is incomplete. HeadTooLarge (431) when the head
    with its blank line is longer than `max_bytes`; an incomplete one is the caller's to judge."""
    start = 0
    while buffer.startswith(b"\r\n", start):
        start += 2
    end = buffer.find(HEAD_END, start)
    if end < 0:
        return None
    used = end + len(HEAD_END)
    if used - start > max_bytes:
        raise HeadTooLarge("request head too large")
    return bytes(buffer[start:end]), used


def serialize_head(start_line: str, headers: Headers) -> bytes:
    """A head ready to send: start line, headers and the blank line."""
    lines = [start_line]
    for key, value in headers:
        lines.append(f"{key}: {value}")
    lines.append("")
    lines.append("")
    return "\r\n".join(lines).encode("latin-1")


class Framing(Enum):
    """How a message body is delimited."""

    NONE = "none"
    LENGTH = "length"
    CHUNKED = "chunked"
    UNTIL_CLOSE = "until-close"


def _content_length(headers: Headers, error: type[GatewayError]) -> int | None:
    """The one length the `Content-Length` headers agree on (ASCII digits only), None without any."""
    lengths = {v.strip() for k, v in headers if k.lower() == "content-length"}
    if not lengths:
        return None
    if len(lengths) != 1:
        raise error("conflicting Content-Length")
    raw = lengths.pop()
    if not _LENGTH.fullmatch(raw):
        raise error("invalid Content-Length")
    return int(raw)


def _request_framing(version: str, headers: Headers) -> tuple[Framing, int]:
    encodings = [v for k, v in headers if k.lower() == "transfer-encoding"]
    length = _content_length(headers, BadRequest)
    if encodings:
        if length is not None:
            raise BadRequest("both Content-Length and Transfer-Encoding")
        if version == "HTTP/1.0":
            raise BadRequest("Transfer-Encoding in an HTTP/1.0 request")  # RFC 9112 section 6.1: faulty framing
        # Only one `chunked`: a coding list is one more thing an instance might read otherwise (h11 refuses it too).
        if len(encodings) != 1 or encodings[0].strip().lower() != "chunked":
            raise BadRequest("unsupported Transfer-Encoding")
        return Framing.CHUNKED, 0
    return (Framing.LENGTH, length) if length else (Framing.NONE, 0)


def request_framing(head: RequestHead) -> tuple[Framing, int]:
    """How the request's body ends: (framing, length for LENGTH); BadRequest for what could be framed otherwise."""
    return _request_framing(head.version, head.headers)


def keeps_alive_unread(head: RequestHead) -> bool:
    """Whether the connection may stay open after an answer given without reading the request's body: only when it
    has none (an unread body would be taken for the next request)."""
    return head.keep_alive and request_framing(head)[0] is Framing.NONE


def _response_framing(headers: Headers) -> tuple[Framing, int]:
    lowered = [k.lower() for k, _ in headers]
    if "transfer-encoding" not in lowered and "content-length" not in lowered:
        return Framing.NONE, 0
    encodings = [t.strip().lower() for k, v in headers if k.lower() == "transfer-encoding" for t in v.split(",")]
    length = _content_length(headers, BadGateway)
    if encodings:
        if length is not None:
            raise BadGateway("both Content-Length and Transfer-Encoding")
        if encodings[-1] != "chunked":
            raise BadGateway("unsupported Transfer-Encoding")
        return Framing.CHUNKED, 0
    return (Framing.LENGTH, length) if length else (Framing.NONE, 0)


def response_framing(method: str, head: ResponseHead) -> tuple[Framing, int]:
    """How the response's body ends, given the request method (HEAD and 1xx/204/304 carry none)."""
    if method == "HEAD" or head.status < 200 or head.status in (204, 304):
        return Framing.NONE, 0
    framing, length = _response_framing(head.headers)
    if framing is Framing.NONE and head.header("content-length") is None:
        return Framing.UNTIL_CLOSE, 0
    return framing, length


_TOKEN_TEXT = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_QUOTED_TEXT = rb'"(?:[\t \x21\x23-\x5b\x5d-\x7e\x80-\xff]|\\[\t \x21-\x7e\x80-\xff])*"'
# chunk-size [chunk-ext] (RFC 9112 section 7.1.1), without whitespace before the first ';' (h11 refuses it too).
_CHUNK_LINE = re.compile(rb"([0-9A-Fa-f]{1,16})(?:;[ \t]*" + _TOKEN_TEXT + rb"(?:[ \t]*=[ \t]*(?:" + _TOKEN_TEXT
                         + rb"|" + _QUOTED_TEXT + rb"))?[ \t]*)*")
_TRAILER_LINE = re.compile(rb"(" + _TOKEN_TEXT + rb"):[\t\x20-\x7e\x80-\xff]*")
_TRAILER_FORBIDDEN = frozenset({b"content-length", b"transfer-encoding", b"host"})
_MAX_CHUNK_SIZE = 1 << 62  # a size that an instance's 64-bit signed arithmetic cannot overflow on


class _Part(Enum):
    SIZE_LINE = "size-line"
    DATA = "data"
    DATA_END = "data-end"  # the CRLF that must follow each chunk's data
    TRAILER = "trailer"


class ChunkedScanner:
    """Finds the end of a chunked body in the bytes fed to it, without copying or decoding the data.

    Strict, as RFC 9112 section 7.1 reads: every line ends in CRLF (a bare CR or LF is an error), the CRLF after
    each chunk's data is checked, the size is 1 to 16 hex digits, extensions and trailer fields are well formed.
    Any error raises the scanner's error class: the caller must then close both connections.
    """

    _MAX_LINE = 4096
    _MAX_TRAILER_BYTES = 16384

    def __init__(self, error: type[GatewayError] = BadRequest) -> None:
        self._error = error
        self._part = _Part.SIZE_LINE
        self._remaining = 0  # data bytes left in the current chunk, or bytes of its closing CRLF
        self._line = b""
        self._trailer_bytes = 0
        self.done = False

    def feed(self, data: bytes) -> int:
        """How many bytes of `data` belong to the body; sets `done` when its end is among them."""
        pos = 0
        size = len(data)
        while pos < size and not self.done:
            if self._part is _Part.DATA:
                step = min(self._remaining, size - pos)
                self._remaining -= step
                pos += step
                if not self._remaining:
                    self._part = _Part.DATA_END
                    self._remaining = 2
                continue
            if self._part is _Part.DATA_END:
                expected = b"\r\n"[2 - self._remaining:]
                step = min(self._remaining, size - pos)
                if data[pos:pos + step] != expected[:step]:
                    raise self._error("chunk data not followed by CRLF")
                self._remaining -= step
                pos += step
                if not self._remaining:
                    self._part = _Part.SIZE_LINE
                continue
            end = data.find(b"\n", pos)
            if end < 0:
                self._line += data[pos:]
                self._check_partial_line()
                return size
            line = self._line + data[pos:end]
            self._line = b""
            pos = end + 1
            if not line.endswith(b"\r"):
                raise self._error("bare LF in a chunked body")
            self._line_complete(line[:-1])
        return pos

    def _check_partial_line(self) -> None:
        if len(self._line) > self._MAX_LINE:
            raise self._error("chunk line too long")
        cr = self._line.find(b"\r")
        if 0 <= cr < len(self._line) - 1:
            raise self._error("bare CR in a chunked body")

    def _line_complete(self, line: bytes) -> None:
        if len(line) > self._MAX_LINE:
            raise self._error("chunk line too long")
        if self._part is _Part.TRAILER:
            self._trailer_complete(line)
            return
        found = _CHUNK_LINE.fullmatch(line)
        if found is None:
            raise self._error("malformed chunk size line")
        length = int(found.group(1), 16)
        if length > _MAX_CHUNK_SIZE:
            raise self._error("chunk size too large")
        if length == 0:
            self._part = _Part.TRAILER
        else:
            self._part = _Part.DATA
            self._remaining = length

    def _trailer_complete(self, line: bytes) -> None:
        if not line:
            self.done = True
            return
        self._trailer_bytes += len(line) + 2
        found = _TRAILER_LINE.fullmatch(line)
        if found is None or self._trailer_bytes > self._MAX_TRAILER_BYTES:
            raise self._error("malformed trailer field")
        if found.group(1).lower() in _TRAILER_FORBIDDEN:
            raise self._error("framing header in trailer")  # RFC 9110 section 6.5.1
