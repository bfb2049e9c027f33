"""An accepted client connection, read by the server's coroutine once its first head is complete."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Coroutine
from typing import Any, Protocol

from gateway.config.model import ServerSettings
from gateway.errors import GatewayError, RequestTimeout
from gateway.proxy.conn import BARE_CR_OR_LF, Conn
from gateway.proxy.httpparse import HEAD_END, split_head
from gateway.tunnel.linger import LINGER_S  # nginx's lingering_timeout, the same for error answers and tunnels


class ConnOwner(Protocol):
    """What a client connection needs from the server that accepted it (`server.GatewayServer`)."""

    @property
    def settings(self) -> ServerSettings: ...

    def connection_opened(self, conn: ClientConn) -> bool: ...

    def connection_adopted(self, conn: ClientConn) -> None: ...

    def connection_closed(self, conn: ClientConn) -> None: ...

    def refuse(self, conn: Conn, error: GatewayError) -> None: ...

    def serve(self, conn: ClientConn) -> Coroutine[Any, Any, None]: ...


class ClientConn(Conn):
    """An accepted client connection.

    Its serving coroutine starts only once the first head is complete (or the client gave up or sent too much):
    most connections send their whole head at once, so no task waits on an empty socket, and the first head's
    timeout is a plain timer rather than a timeout scope.
    """

    def __init__(self, server: ConnOwner, loop: asyncio.AbstractEventLoop, *, adopted: bool = False) -> None:
        super().__init__(loop)
        self.server = server
        # Handed back by the native HTTP lane in the middle of a request: its coroutine is started by whoever
        # adopted it, without the first head's timer or admission (it was admitted already).
        self.adopted = adopted
        self.busy = False  # between reading a head and finishing its answer
        self.remote = "unknown"  # the client's address, set when serving starts (peername, looked up once)
        self.task: asyncio.Task[None] | None = None
        self._head_timer: asyncio.TimerHandle | None = None
        self._head_deadline = 0.0
        self._scan_from = 0
        self._linger_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        if self.adopted:
            self.server.connection_adopted(self)
        elif self.server.connection_opened(self):
            timeout_s = self.server.settings.head_timeout_s
            assert self._loop is not None
            self._head_deadline = time.monotonic() + timeout_s
            self._head_timer = self._loop.call_later(timeout_s, self._first_head_late)

    def data_received(self, data: bytes) -> None:
        if self._linger_timer is not None:
            return  # lingering after an error answer: what still comes is dropped
        super().data_received(data)
        self.check_first_head()

    def check_first_head(self) -> None:
        """Start serving once the first head is complete (or refused); also for bytes the native lane read."""
        if self._head_timer is not None:
            if (self.buffer.find(HEAD_END, self._scan_from) >= 0
                    or len(self.buffer) > self.server.settings.max_head_bytes
                    or BARE_CR_OR_LF.search(self.buffer, max(0, self._scan_from - 1)) is not None):
                self._start()  # to answer the head, or refuse it
            else:
                self._scan_from = max(0, len(self.buffer) - len(HEAD_END) + 1)

    def eof_received(self) -> bool:
        result = super().eof_received()
        if self._head_timer is not None:
            self._start()
        return result

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        if self._linger_timer is not None:
            self._linger_timer.cancel()
        self.server.connection_closed(self)

    def take_head(self, *, max_bytes: int) -> bytes | None:
        """The next head if it is all buffered (what `read_head` would return at once), else None.

        The first head is almost always complete when the serving coroutine starts: this spares a coroutine.
        """
        buffer = self.buffer
        if not buffer:
            return None  # between keep-alive requests: the usual case after the first
        if buffer.startswith(b"\r\n"):
            self._skip_blank_lines()  # also when the head is incomplete: the caller compares the rest to max_bytes
        taken = split_head(buffer, max_bytes)
        if taken is None:
            return None
        head, used = taken
        del buffer[:used]
        return head

    def close_lingering(self, *, linger_s: float = LINGER_S) -> None:
        """Close after an answer to a client that may still be sending (an error, or input left unread).

        Closing a socket with unread input makes the kernel send a reset, which can overtake the answer on its way
        and destroy it (nginx's lingering close exists for this). Instead the write side is shut down once the
        answer is sent, whatever still comes is dropped, and the connection closes at the client's EOF or after
        `linger_s`.
        """
        transport = self.transport
        if (transport is None or transport.is_closing() or self.eof or self._loop is None
                or not transport.can_write_eof()):
            self.close()
            return
        if self._linger_timer is not None:
            return
        self.buffer.clear()
        self._linger_timer = self._loop.call_later(linger_s, transport.abort)
        transport.write_eof()
        self.resume_reading()

    def _start(self) -> None:
        assert self._head_timer is not None
        self._head_timer.cancel()
        self._head_timer = None
        assert self._loop is not None
        self.task = self._loop.create_task(self.server.serve(self))

    def _first_head_late(self) -> None:
        # uvloop's timers count from the loop's clock cached at the start of the iteration that accepted the
        # connection (libuv's uv_now), so in a burst of accepts they fire up to that iteration's length early: a
        # client is still owed the whole head timeout, counted from the accept.
        left = self._head_deadline - time.monotonic()
        if left > 0:
            assert self._loop is not None
            self._head_timer = self._loop.call_later(max(left, 0.001), self._first_head_late)
            return
        self._head_timer = None
        self.server.refuse(self, RequestTimeout("request head not received in time"))
