"""A connection read by coroutines (heads and bodies) until it is handed over to a tunnel.

`Conn` is an asyncio Protocol with an input buffer: `data_received` appends and wakes the reader, reading
pauses while the buffer is above `HIGH_WATER_BYTES`, and `drain` waits while the transport's write buffer is
full. After a 101 the transport is given a tunnel protocol (`transport.set_protocol`), and `take_buffer`
hands over whatever arrived after the head.
"""

from __future__ import annotations

import asyncio
import re
from typing import cast

from gateway.errors import BadRequest, HeadTooLarge
from gateway.proxy.httpparse import HEAD_END, split_head

HIGH_WATER_BYTES = 256 * 1024
# A CR not followed by LF, or an LF without its CR: a head that will never end in CRLFCRLF as we read it, while
# another parser (h11 takes "\n\n") may see its end already. Refused at once rather than after the head timeout.
BARE_CR_OR_LF = re.compile(rb"\r[^\n]|(?<!\r)\n")


class Conn(asyncio.Protocol):
    """One side's transport plus an input buffer read through coroutines."""

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        # Passing the loop spares a get_running_loop() (a getpid() system call) per wait.
        self._loop = loop
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.eof = False
        self.lost = False
        self._waiter: asyncio.Future[None] | None = None
        self._drain_waiter: asyncio.Future[None] | None = None
        self._write_paused = False
        self._read_paused = False

    @property
    def writing_paused(self) -> bool:
        """Whether the transport's write buffer is above its high-water mark (`drain` would wait)."""
        return self._write_paused

    @property
    def loop(self) -> asyncio.AbstractEventLoop | None:
        """The event loop given at construction (or found on the first wait)."""
        return self._loop

    # -- Protocol callbacks -------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if len(self.buffer) > HIGH_WATER_BYTES and not self._read_paused and self.transport is not None:
            self._read_paused = True
            self.transport.pause_reading()
        self._wake()

    def eof_received(self) -> bool:
        self.eof = True
        self._wake()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.eof = True
        self._wake()
        self._write_paused = False
        self._wake_drain()

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        self._wake_drain()

    # -- helpers --------------------------------------------------------------------------------------
    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _wake_drain(self) -> None:
        waiter = self._drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _wait_data(self) -> None:
        if self._read_paused and self.transport is not None and len(self.buffer) <= HIGH_WATER_BYTES // 2:
            self._read_paused = False
            self.transport.resume_reading()
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        self._waiter = self._loop.create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    def resume_reading(self) -> None:
        """Undo our own pause (before the transport changes hands)."""
        if self._read_paused and self.transport is not None:
            self._read_paused = False
            self.transport.resume_reading()

    def _skip_blank_lines(self) -> None:
        # Tolerate CRLFs between messages (RFC 9112 section 2.2).
        while self.buffer[:2] == b"\r\n":
            del self.buffer[:2]

    def head_ready(self) -> bool:
        """Whether a complete head is buffered (reading it will not wait)."""
        self._skip_blank_lines()
        return self.buffer.find(HEAD_END) >= 0

    async def read_head(self, *, max_bytes: int) -> bytes | None:
        """The next head without its blank line; None on a clean EOF before any byte."""
        while True:
            self._skip_blank_lines()
            # Most waits start on an empty buffer (a keep-alive connection between requests): nothing to split.
            taken = split_head(self.buffer, max_bytes) if self.buffer else None
            if taken is not None:
                head, used = taken
                del self.buffer[:used]
                return head
            if len(self.buffer) > max_bytes:
                raise HeadTooLarge("request head too large")
            if BARE_CR_OR_LF.search(self.buffer):
                raise BadRequest("bare CR or LF in a head")
            if self.eof:
                if not self.buffer:
                    return None
                raise BadRequest("connection closed inside a head")
            await self._wait_data()

    async def read_some(self) -> bytes:
        """Whatever is buffered (waiting for some when empty); b"" at EOF."""
        while not self.buffer:
            if self.eof:
                return b""
            await self._wait_data()
        return self.take_buffer()

    def take_buffer(self) -> bytes:
        """Everything buffered, emptying the buffer."""
        data = bytes(self.buffer)
        self.buffer.clear()
        return data

    def unread(self, data: bytes) -> None:
        """Put `data` back in front of the buffer (bytes past the end of a body)."""
        if data:
            self.buffer[:0] = data

    def write(self, data: bytes) -> None:
        """Send `data` unless the connection is gone."""
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    async def drain(self) -> None:
        """Wait while the transport's write buffer is above its high-water mark."""
        while self._write_paused and not self.lost:
            if self._loop is None:
                self._loop = asyncio.get_running_loop()
            self._drain_waiter = self._loop.create_future()
            try:
                await self._drain_waiter
            finally:
                self._drain_waiter = None

    def close(self) -> None:
        """Close the transport (after sending what is buffered)."""
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        """Close at once."""
        if self.transport is not None:
            self.transport.abort()
