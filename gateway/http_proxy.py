"""Dialing instances, a keep-alive pool per instance, and streaming bodies between connections.

Bodies are relayed with their framing untouched (Content-Length, chunked or until close): each read is written
on at once and the reader waits for the writer's buffer to drain, so memory stays bounded by the buffer sizes.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import time

from gateway.conn import Conn
from gateway.discovery.base import Endpoint
from gateway.errors import BadGateway, GatewayError, UpstreamTimeout
from gateway.httpparse import ChunkedScanner, Framing, ResponseHead, parse_response_head, serialize_head

MAX_RESPONSE_HEAD_BYTES = 64 * 1024


async def adopt_socket(fd: int, data: bytes, *, loop: asyncio.AbstractEventLoop) -> Conn:
    """A connected socket's descriptor (now owned here) as a Conn whose buffer starts with `data`, read from it."""
    sock = socket.socket(fileno=fd)

    def protocol() -> Conn:
        conn = Conn(loop)
        conn.buffer += data
        return conn

    try:
        _, conn = await loop.create_connection(protocol, sock=sock)
    except BaseException:
        sock.close()
        raise
    return conn


async def read_response(client: Conn, upstream: Conn, response_timeout_s: float | None) -> ResponseHead:
    """Read the instance's final response head; 1xx heads other than 101 are passed on to `client` meanwhile."""
    while True:
        try:
            if response_timeout_s is None:
                raw = await upstream.read_head(max_bytes=MAX_RESPONSE_HEAD_BYTES)
            else:
                async with asyncio.timeout(response_timeout_s):
                    raw = await upstream.read_head(max_bytes=MAX_RESPONSE_HEAD_BYTES)
        except TimeoutError:
            raise UpstreamTimeout("instance did not answer in time") from None
        except GatewayError as error:
            raise BadGateway(f"bad response head from instance: {error}") from None
        if raw is None:
            raise BadGateway("instance closed the connection without answering")
        response = parse_response_head(raw)
        if 100 <= response.status < 200 and response.status != 101:
            client.write(serialize_head(f"HTTP/1.1 {response.status} {response.reason}", response.headers))
            continue
        return response


async def dial(endpoint: Endpoint, *, timeout_s: float, ssl_context: ssl.SSLContext | None,
               loop: asyncio.AbstractEventLoop | None = None) -> Conn:
    """Connect to `endpoint` (TLS when `ssl_context` is given); raises OSError or TimeoutError.

    The timeout is a plain timer that cancels the dialing task, with `asyncio.timeout`'s semantics (its own
    expiry becomes TimeoutError, a caller's cancellation stays a CancelledError): `asyncio.timeout` would look
    the running loop up three times (a getpid() system call each) and build a scope object on every dial.
    """
    if loop is None:
        loop = asyncio.get_running_loop()
    task = asyncio.current_task(loop)
    if task is None:
        raise RuntimeError("dial() must run inside a task")
    cancelling = task.cancelling()
    expired = False

    def expire() -> None:
        nonlocal expired
        expired = True
        task.cancel()

    timer = loop.call_later(timeout_s, expire)
    try:
        _, conn = await loop.create_connection(
            lambda: Conn(loop), endpoint.host, endpoint.port, ssl=ssl_context,
            server_hostname=endpoint.host if ssl_context is not None else None,
        )
    except BaseException as exc:
        timer.cancel()
        # Whatever ended the connect, the timer's own cancellation is taken back (as asyncio.timeout does).
        if expired and task.uncancel() <= cancelling and isinstance(exc, asyncio.CancelledError):
            raise TimeoutError from None
        raise
    timer.cancel()
    if expired:
        task.uncancel()
    return conn


class UpstreamPool:
    """Idle keep-alive connections per instance (and TLS or not), reused newest first."""

    def __init__(self, *, max_idle_per_instance: int = 32, idle_expiry_s: float = 30.0) -> None:
        self._idle: dict[tuple[str, int, bool], list[tuple[float, Conn]]] = {}
        self._max_idle = max_idle_per_instance
        self._expiry_s = idle_expiry_s

    def take(self, endpoint: Endpoint, *, tls: bool) -> Conn | None:
        """An idle connection to `endpoint` that still looks usable, or None."""
        stack = self._idle.get((endpoint.host, endpoint.port, tls))
        now = time.monotonic()
        while stack:
            since, conn = stack.pop()
            if conn.eof or conn.buffer or now - since > self._expiry_s:
                conn.close()
                continue
            return conn
        return None

    def put(self, endpoint: Endpoint, conn: Conn, *, tls: bool) -> None:
        """Keep `conn` for the next request to `endpoint`."""
        if conn.eof:
            conn.close()
            return
        stack = self._idle.setdefault((endpoint.host, endpoint.port, tls), [])
        stack.append((time.monotonic(), conn))
        if len(stack) > self._max_idle:
            stack.pop(0)[1].close()

    def close(self) -> None:
        """Close every idle connection."""
        for stack in self._idle.values():
            for _, conn in stack:
                conn.close()
        self._idle.clear()


async def relay_body(src: Conn, dst: Conn, framing: Framing, length: int, *, error: type[GatewayError]) -> int:
    """Copy one body from `src` to `dst`; bytes past its end stay in `src`. Returns the body's size on the wire."""
    if framing is Framing.NONE:
        return 0
    total = 0
    scanner = ChunkedScanner(error) if framing is Framing.CHUNKED else None
    remaining = length
    while True:
        data = await src.read_some()
        if not data:
            if framing is Framing.UNTIL_CLOSE:
                return total
            raise error("connection closed inside a body")
        if scanner is not None:
            used = scanner.feed(data)
        elif framing is Framing.LENGTH:
            used = min(remaining, len(data))
            remaining -= used
        else:
            used = len(data)
        if used < len(data):
            src.unread(data[used:])
            data = data[:used]
        dst.write(data)
        total += used
        if (scanner is not None and scanner.done) or (framing is Framing.LENGTH and remaining == 0):
            return total
        await dst.drain()
