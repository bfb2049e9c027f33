"""HTTP/1.x heads and body framing (pure): parse request and response heads, find where a body ends.

Heads are parsed strictly (RFC 9112): CRLF line ends, token header names, no obsolete line folding, no control
characters in values. A request with both `Content-Length` and `Transfer-Encoding`, or conflicting lengths, is
refused (request smuggling). Bodies are not decoded: `ChunkedScanner` only finds where a chunked body ends, so
the proxy can relay it byte for byte.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum

from gateway.errors import BadGateway, BadRequest, GatewayError
from gateway.model import Headers

HEAD_END = b"\r\n\r\n"
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_VALUE_BAD = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
_TARGET = re.compile(rb"[\x21-\x7e\x80-\xff]+")
_VERSION = re.compile(rb"HTTP/1\.[01]")
_HEX = re.compile(rb"[0-9a-fA-F]{1,16}")
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
            raise error(f"malformed header line {line[:64]!r}")
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
        return RequestHead(method, target, version, _split_fields(block))
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


def _framing(headers: Headers, error: type[GatewayError]) -> tuple[Framing, int]:
    lowered = [k.lower() for k, _ in headers]
    if "transfer-encoding" not in lowered and "content-length" not in lowered:
        return Framing.NONE, 0  # most requests, every WebSocket handshake
    encodings = [t.strip().lower() for k, v in headers if k.lower() == "transfer-encoding" for t in v.split(",")]
    lengths = {v.strip() for k, v in headers if k.lower() == "content-length"}
    if encodings:
        if lengths:
            raise error("both Content-Length and Transfer-Encoding")
        if encodings[-1] != "chunked":
            raise error("unsupported Transfer-Encoding")
        return Framing.CHUNKED, 0
    if lengths:
        if len(lengths) != 1:
            raise error("conflicting Content-Length")
        raw = lengths.pop()
        if not raw.isdigit() or len(raw) > 18:
            raise error("invalid Content-Length")
        length = int(raw)
        return (Framing.LENGTH, length) if length else (Framing.NONE, 0)
    return Framing.NONE, 0


def request_framing(head: RequestHead) -> tuple[Framing, int]:
    """How the request's body ends: (framing, length for LENGTH)."""
    return _framing(head.headers, BadRequest)


def response_framing(method: str, head: ResponseHead) -> tuple[Framing, int]:
    """How the response's body ends, given the request method (HEAD and 1xx/204/304 carry none)."""
    if method == "HEAD" or head.status < 200 or head.status in (204, 304):
        return Framing.NONE, 0
    framing, length = _framing(head.headers, BadGateway)
    if framing is Framing.NONE and head.header("content-length") is None:
        return Framing.UNTIL_CLOSE, 0
    return framing, length


class ChunkedScanner:
    """Finds the end of a chunked body in the bytes fed to it, without copying or decoding the data."""

    _MAX_LINE = 4096

    def __init__(self, error: type[GatewayError] = BadRequest) -> None:
        self._error = error
        self._remaining = 0  # data bytes (plus CRLF) left in the current chunk
        self._line = b""
        self._trailers = False
        self.done = False

    def feed(self, data: bytes) -> int:
        """How many bytes of `data` belong to the body; sets `done` when its end is among them."""
        pos = 0
        size = len(data)
        while pos < size and not self.done:
            if self._remaining:
                step = min(self._remaining, size - pos)
                self._remaining -= step
                pos += step
                continue
            end = data.find(b"\n", pos)
            if end < 0:
                self._line += data[pos:]
                if len(self._line) > self._MAX_LINE:
                    raise self._error("chunk line too long")
                return size
            line = (self._line + data[pos:end]).rstrip(b"\r")
            self._line = b""
            pos = end + 1
            self._line_complete(line)
        return pos

    def _line_complete(self, line: bytes) -> None:
        if self._trailers:
            if not line:
                self.done = True
            return
        raw = line.partition(b";")[0].strip()
        if not _HEX.fullmatch(raw):
            raise self._error("malformed chunk size")
        length = int(raw, 16)
        if length == 0:
            self._trailers = True
        else:
            self._remaining = length + 2
