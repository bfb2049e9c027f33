"""The fan-out benchmark's push senders: a keep-alive raw HTTP/1.1 pool for the node API, a bounded socket.io emitter.

The load generator shares two cores with the systems under test, so the senders stay cheap (prebuilt request heads,
no client library per request) and both systems get the same number of pushes in flight (`in_flight`).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, cast


class HttpStatusError(RuntimeError):
    """The node answered a push with something other than the expected status."""


class _Conn(asyncio.Protocol):
    """One keep-alive connection with at most one request in flight; responses carry Content-Length."""

    def __init__(self) -> None:
        self.buf = bytearray()
        self.waiter: asyncio.Future[tuple[int, bytes]] | None = None
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError("push connection lost"))

    def data_received(self, data: bytes) -> None:
        self.buf += data
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            return
        length = 0
        for line in bytes(self.buf[:end]).split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        if len(self.buf) < end + 4 + length:
            return
        status = int(self.buf[9:12])
        body = bytes(self.buf[end + 4:end + 4 + length])
        del self.buf[:end + 4 + length]
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result((status, body))

    async def request(self, raw: bytes) -> tuple[int, bytes]:
        assert self.transport is not None
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(raw)
        return await self.waiter


class NodePusher:
    """POST `path` (the node's /api/v1/push, or the Node socket.io server's /push) over `in_flight` keep-alive
    connections; both answer 202."""

    def __init__(self, port: int, api_key: str, *, in_flight: int, path: str = "/api/v1/push") -> None:
        self.port, self.in_flight = port, in_flight
        self._head = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {api_key}\r\n"
                      "Content-Type: application/json\r\nContent-Length: ").encode()
        self._idle: asyncio.Queue[_Conn] = asyncio.Queue()
        self._conns: list[_Conn] = []

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        for _ in range(self.in_flight):
            _, conn = await loop.create_connection(_Conn, "127.0.0.1", self.port)
            self._conns.append(conn)
            self._idle.put_nowait(conn)

    async def push(self, body: dict[str, Any]) -> None:
        payload = json.dumps(body, separators=(",", ":")).encode()
        conn = await self._idle.get()
        try:
            status, answer = await conn.request(self._head + str(len(payload)).encode() + b"\r\n\r\n" + payload)
        finally:
            self._idle.put_nowait(conn)
        if status != 202:
            raise HttpStatusError(f"push answered {status}: {answer[:200]!r}")

    def close(self) -> None:
        for conn in self._conns:
            if conn.transport is not None:
                conn.transport.close()


class SocketioPusher:
    """Emits through python-socketio's write-only AsyncRedisManager, at most `in_flight` at a time.

    Unbounded concurrent emits make the manager open one Redis connection each and fail ("Too many connections").
    """

    def __init__(self, redis_url: str, channel: str, *, in_flight: int) -> None:
        import socketio

        self._mgr: Any = socketio.AsyncRedisManager(redis_url, channel=channel, write_only=True)
        self._slots = asyncio.Semaphore(in_flight)

    async def push(self, room: str | None, data: dict[str, Any]) -> None:
        async with self._slots:
            await self._mgr.emit("message", data, room=room)

    async def close(self) -> None:
        redis = getattr(self._mgr, "redis", None)
        if redis is not None:
            await redis.aclose()
