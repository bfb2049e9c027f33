"""Whole bodies: responses for the filters that rewrite or keep one (RemoveJsonAttributesResponseBody,
LocalResponseCache), requests that Retry or a CircuitBreaker fallback may send again.

Bodies are otherwise streamed; a route with a body edit reads the instance's body into memory (at most
`MAX_BUFFERED_BYTES`, Spring's default `spring.codec.max-in-memory-size` of 256 KiB, beyond which SCG fails the
request with a DataBufferLimitException, 500), applies the edits and answers with a Content-Length body.
"""

from __future__ import annotations

from gateway.errors import BadGateway, GatewayError
from gateway.model import BodyEdit, Headers
from gateway.proxy.conn import Conn
from gateway.proxy.httpparse import ChunkedScanner, Framing

MAX_BUFFERED_BYTES = 256 * 1024


def dechunk(raw: bytes) -> bytes:
    """The data of a complete chunked body (already checked by ChunkedScanner); trailers are dropped."""
    out = bytearray()
    pos = 0
    while True:
        end = raw.index(b"\n", pos)
        size = int(raw[pos:end].rstrip(b"\r").partition(b";")[0].strip(), 16)
        pos = end + 1
        if size == 0:
            return bytes(out)
        out += raw[pos:pos + size]
        pos += size + 2  # the data and its CRLF


class BodyReader:
    """Reads one response body off the instance's connection, as it came on the wire (framing kept)."""

    def __init__(self, upstream: Conn, framing: Framing, length: int,
                 error: type[GatewayError] = BadGateway) -> None:
        self.upstream = upstream
        self.framing = framing
        self.remaining = length
        self.error = error
        self.scanner = ChunkedScanner(error) if framing is Framing.CHUNKED else None
        self.done = framing is Framing.NONE or (framing is Framing.LENGTH and length == 0)
        self.overflow = b""

    async def read(self) -> bytes:
        """The next piece of the body (b"" once it is complete); bytes past its end stay in the connection."""
        if self.done:
            return b""
        data = await self.upstream.read_some()
        if not data:
            if self.framing is not Framing.UNTIL_CLOSE:
                raise self.error("connection closed inside a body")
            self.done = True
            return b""
        if self.scanner is not None:
            used = self.scanner.feed(data)
            self.done = self.scanner.done
        elif self.framing is Framing.LENGTH:
            used = min(self.remaining, len(data))
            self.remaining -= used
            self.done = self.remaining == 0
        else:
            used = len(data)
        if used < len(data):
            self.upstream.unread(data[used:])
        return data[:used]

    def decode(self, raw: bytes) -> bytes:
        """The data of the complete body `raw` (chunked framing removed)."""
        return dechunk(raw) if self.scanner is not None else raw


async def read_body(reader: BodyReader, *, limit: int = MAX_BUFFERED_BYTES) -> bytes | None:
    """The whole raw body, or None once more than `limit` bytes came (what was read is in `reader.overflow`)."""
    raw = bytearray()
    while not reader.done:
        raw += await reader.read()
        if len(raw) > limit + 64:
            reader.overflow = bytes(raw)
            return None
    return bytes(raw)


def too_large(limit: int = MAX_BUFFERED_BYTES) -> GatewayError:
    """SCG's DataBufferLimitException, answered 500."""
    return GatewayError(f"Exceeded limit on max bytes to buffer : {limit}", status=500)


def edited(status: int, headers: Headers, body: bytes, edits: tuple[BodyEdit, ...]) -> tuple[Headers, bytes]:
    """Apply the body edits; the framing headers are replaced by the new Content-Length."""
    for edit in edits:
        headers, body = edit.edit_body(status, headers, body)
    framing_names = ("content-length", "transfer-encoding")
    kept = tuple((k, v) for k, v in headers if k.lower() not in framing_names)
    return (*kept, ("Content-Length", str(len(body)))), body
