"""Whole response bodies for the filters that rewrite one (RemoveJsonAttributesResponseBody).

Bodies are otherwise streamed; a route with a body edit reads the instance's body into memory (at most
`MAX_BUFFERED_BYTES`, Spring's default `spring.codec.max-in-memory-size` of 256 KiB, beyond which SCG fails the
request with a DataBufferLimitException, 500), applies the edits and answers with a Content-Length body.
"""

from __future__ import annotations

from gateway.conn import Conn
from gateway.errors import BadGateway, GatewayError
from gateway.httpparse import ChunkedScanner, Framing
from gateway.model import BodyEdit, Headers

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


async def read_body(upstream: Conn, framing: Framing, length: int, *, limit: int = MAX_BUFFERED_BYTES) -> bytes:
    """The instance's whole body (decoded from chunked framing); GatewayError 500 past `limit`."""
    if framing is Framing.NONE:
        return b""
    raw = bytearray()
    scanner = ChunkedScanner(BadGateway) if framing is Framing.CHUNKED else None
    while True:
        if framing is Framing.LENGTH and len(raw) >= length:
            break
        data = await upstream.read_some()
        if not data:
            if framing is Framing.UNTIL_CLOSE:
                break
            raise BadGateway("connection closed inside a body")
        if scanner is not None:
            used = scanner.feed(data)
            raw += data[:used]
            if scanner.done:
                break
        else:
            raw += data
        if len(raw) > limit + 64:
            raise GatewayError(f"Exceeded limit on max bytes to buffer : {limit}", status=500)
    body = dechunk(bytes(raw)) if scanner is not None else bytes(raw[:length] if framing is Framing.LENGTH else raw)
    if len(body) > limit:
        raise GatewayError(f"Exceeded limit on max bytes to buffer : {limit}", status=500)
    return body


def edited(status: int, headers: Headers, body: bytes, edits: tuple[BodyEdit, ...]) -> tuple[Headers, bytes]:
    """Apply the body edits; the framing headers are replaced by the new Content-Length."""
    for edit in edits:
        headers, body = edit.edit_body(status, headers, body)
    framing_names = ("content-length", "transfer-encoding")
    kept = tuple((k, v) for k, v in headers if k.lower() not in framing_names)
    return (*kept, ("Content-Length", str(len(body)))), body
