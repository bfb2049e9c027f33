"""Dialing instances, a keep-alive pool per instance, and streaming bodies between connections.

Bodies are relayed with their framing untouched (Content-Length, chunked or until close): each read is written
on at once and the reader waits for the writer's buffer to drain, so memory stays bounded by the buffer sizes.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
from collections.abc import Coroutine
from typing import Any, TypeVar

from gateway.discovery.base import Endpoint
from gateway.errors import BadGateway, BadRequest, GatewayError, UpstreamTimeout
from gateway.proxy.conn import Conn
from gateway.proxy.httpparse import ChunkedScanner, Framing, ResponseHead, parse_response_head, serialize_head

_T = TypeVar("_T")
MAX_RESPONSE_HEAD_BYTES = 64 * 1024
# A body of at most this size that is all buffered already goes out together with its head, in one write.
JOIN_MAX_BYTES = 64 * 1024
# TCP keepalive on connections to instances: a peer that vanished without a reset (a silent partition) is found
# within about KEEPIDLE + KEEPCNT * KEEPINTVL seconds even when no timeout of ours runs (response-timeout -1).
KEEPALIVE_IDLE_S = 15
KEEPALIVE_INTERVAL_S = 5
KEEPALIVE_COUNT = 3


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


async def read_response(client: Conn, upstream: Conn, response_timeout_s: float | None, *,
                        upgrade: bool = True) -> ResponseHead:
    """Read the instance's final response head; 1xx heads other than 101 are passed on to `client` meanwhile.

    A 101 to a request that asked for no upgrade (`upgrade` False) is a BadGateway: the connection would speak
    another protocol from then on.
    """
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
        if response.status == 101 and not upgrade:
            raise BadGateway("instance switched protocols without being asked to")
        return response


async def dial(endpoint: Endpoint, *, timeout_s: float | None, ssl_context: ssl.SSLContext | None,
               loop: asyncio.AbstractEventLoop | None = None) -> Conn:
    """Connect to `endpoint` (TLS when `ssl_context` is given, no timer when `timeout_s` is None); raises OSError
    or TimeoutError. The connection has TCP keepalive on.

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

    timer = loop.call_later(timeout_s, expire) if timeout_s is not None else None
    try:
        _, conn = await loop.create_connection(
            lambda: Conn(loop), endpoint.host, endpoint.port, ssl=ssl_context,
            server_hostname=endpoint.host if ssl_context is not None else None,
        )
    except BaseException as exc:
        if timer is not None:
            timer.cancel()
        # Whatever ended the connect, the timer's own cancellation is taken back (as asyncio.timeout does).
        if expired and task.uncancel() <= cancelling and isinstance(exc, asyncio.CancelledError):
            raise TimeoutError from None
        raise
    if timer is not None:
        timer.cancel()
    if expired:
        task.uncancel()
    keep_alive(conn)
    return conn


def keep_alive(conn: Conn) -> None:
    """Turn TCP keepalive on for `conn`'s socket (best effort: a transport without a socket is left alone)."""
    sock = conn.transport.get_extra_info("socket") if conn.transport is not None else None
    if sock is None:
        return
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        if hasattr(socket, "TCP_KEEPIDLE"):  # Linux; macOS has only the switch above
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, KEEPALIVE_IDLE_S)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, KEEPALIVE_INTERVAL_S)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, KEEPALIVE_COUNT)
    except OSError:
        pass


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


def check_request_body(conn: Conn, framing: Framing, *, upgrade: bool) -> None:
    """BadRequest, before anything of the request is sent upstream, for a body on a WebSocket handshake, or for a
    chunked body whose part already buffered on `conn` is malformed (the relay checks the rest as it comes, and
    closes both sides on an error)."""
    if upgrade and framing is not Framing.NONE:
        # After a 101 the bytes are relayed blind: a body could be read as frames by one side, not the other.
        raise BadRequest("a WebSocket handshake carries no body")
    if framing is Framing.CHUNKED and conn.buffer:
        ChunkedScanner(BadRequest).feed(bytes(conn.buffer))


def buffered_body(src: Conn, framing: Framing, length: int) -> bytes | None:
    """A Content-Length body of at most JOIN_MAX_BYTES that `src` holds whole already, taken off its buffer (what
    follows it stays); None otherwise, for `relay_body`. The usual small message comes with its head: sending both
    in one write spares a write and the relay loop."""
    if framing is not Framing.LENGTH or length > JOIN_MAX_BYTES or len(src.buffer) < length:
        return None
    buffer = src.buffer
    body = bytes(buffer[:length])
    del buffer[:length]
    return body


async def relay_body(src: Conn, dst: Conn, framing: Framing, length: int, *, error: type[GatewayError],
                     read_timeout_s: float | None = None, drain_timeout_s: float | None = None) -> int:
    """Copy one body from `src` to `dst`; bytes past its end stay in `src`. Returns the body's size on the wire.

    `read_timeout_s` bounds each wait for `src` (an instance that stops sending its response), `drain_timeout_s`
    each wait for `dst` to take what was written (an instance that stops reading the request): UpstreamTimeout.
    """
    if framing is Framing.NONE:
        return 0
    total = 0
    scanner = ChunkedScanner(error) if framing is Framing.CHUNKED else None
    remaining = length
    while True:
        if read_timeout_s is None or src.buffer or src.eof:
            data = await src.read_some()
        else:
            data = await _bounded(src.read_some(), read_timeout_s, "instance stopped sending its response")
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
        if drain_timeout_s is None or not dst.writing_paused:
            await dst.drain()
        else:
            await _bounded(dst.drain(), drain_timeout_s, "instance stopped reading the request")


async def _bounded(waiting: Coroutine[Any, Any, _T], timeout_s: float, message: str) -> _T:
    try:
        async with asyncio.timeout(timeout_s):
            return await waiting
    except TimeoutError:
        raise UpstreamTimeout(message) from None
