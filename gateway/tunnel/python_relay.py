"""The opaque byte tunnel after a 101 in Python: each side's bytes go straight into the other side's transport.

Plain TCP tunnels normally go to the native relay thread instead (`native_relay`); this one carries TLS tunnels,
and all of them when the native module is not built or `wsgate.native-relay` is false. Both follow the same rules.

Frames are never parsed. Each side's `data_received` *is* the other transport's `write` (a bound method stored
on the protocol), so a chunk goes from the event loop's read callback into `write` without a Python frame of
ours in between. Backpressure is paired: when one transport's write buffer passes its high-water mark
(`pause_writing`), the other transport stops reading until it drains (`resume_writing`). EOF, a reset or an
error on either side, `close` or the idle timeout end the tunnel with the lingering close of `gateway.tunnel.linger`:
each side still open is flushed, its write side shut down (`write_eof`) and what it still sends is dropped until
its EOF or `linger_s`.

A plain TCP side also keeps a duplicate of its socket (`spare`): when writing to it fails on a reset, the event
loop closes its descriptor at once, and the last bytes that side sent before the reset (a close frame) are still
queued in the kernel. They are read from the duplicate and go to the other side (the native relay does the same
before closing a failed socket). The cost is a descriptor per side: the Python relay is the fallback for plain TCP.

Nothing is counted per chunk: the bytes each side sent are read from the kernel (TCP_INFO's
`tcpi_bytes_received`, handshake included) when the tunnel ends or is checked for idleness.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import struct
from collections.abc import Callable

from gateway.proxy.conn import Conn
from gateway.tunnel.linger import DEFAULT_TIMEOUTS, CloseTimeouts, Verdict, verdict

# struct tcp_info (linux/tcp.h): tcpi_bytes_received is the u64 at offset 128 (Linux >= 4.1).
_TCP_INFO_LEN = 136
_BYTES_RECEIVED_AT = 128


def bytes_received(transport: asyncio.BaseTransport) -> int | None:
    """Bytes the kernel has received on `transport`'s TCP socket, or None when it cannot tell."""
    option = getattr(socket, "TCP_INFO", None)
    sock = transport.get_extra_info("socket")
    if option is None or sock is None:
        return None
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, option, _TCP_INFO_LEN)
    except OSError:
        return None
    if len(info) < _TCP_INFO_LEN:
        return None
    return int(struct.unpack_from("Q", info, _BYTES_RECEIVED_AT)[0])


def _drop(data: bytes) -> None:
    """What a closing side still sends goes nowhere."""


def _spare_socket(transport: asyncio.BaseTransport) -> socket.socket | None:
    """A duplicate of a plain TCP transport's socket, or None (TLS, no socket, no descriptor left)."""
    sock = transport.get_extra_info("socket")
    if sock is None or transport.get_extra_info("ssl_object") is not None:
        return None
    try:
        spare = socket.socket(fileno=os.dup(sock.fileno()))
    except OSError:
        return None
    spare.setblocking(False)
    return spare


class TunnelSide(asyncio.BaseProtocol):
    """The protocol of one transport in a tunnel; `peer` is the other transport."""

    __slots__ = ("_tunnel", "data_received", "eof", "flushed_since_s", "lost", "peer", "spare", "transport")

    def __init__(self, transport: asyncio.Transport, peer: asyncio.Transport, tunnel: Tunnel) -> None:
        self.transport = transport
        self.spare = _spare_socket(transport)
        self.peer = peer
        self.data_received: Callable[[bytes], object] = peer.write
        self._tunnel = tunnel
        self.eof = False
        self.lost = False
        self.flushed_since_s: float | None = None

    def eof_received(self) -> bool:
        self.eof = True
        self._tunnel.begin_close()
        return False  # the transport closes once what is pending for it is sent

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if self.spare is not None:
            if exc is not None and not self._tunnel.closing:
                self._salvage(self.spare)
            self.spare.close()
            self.spare = None
        self._tunnel.begin_close()
        self._tunnel.side_lost()

    def _salvage(self, spare: socket.socket) -> None:
        """What this side sent before it failed, still queued in the kernel, goes to the peer."""
        with contextlib.suppress(OSError):
            while chunk := spare.recv(65536):
                self.data_received(chunk)

    def pause_writing(self) -> None:
        if not self._tunnel.closing:
            self.peer.pause_reading()

    def resume_writing(self) -> None:
        if not self._tunnel.closing and not self.peer.is_closing():
            self.peer.resume_reading()

    def linger(self, now_s: float) -> None:
        """Stop relaying to the peer: drop what comes, shut the write side down once flushed
        (`gateway.tunnel.linger`)."""
        self.data_received = _drop
        transport = self.transport
        if self.lost or transport.is_closing():
            return
        transport.set_protocol(self)  # uvloop keeps the protocol's data_received from when it was set
        if self.eof or not transport.can_write_eof():
            transport.close()  # TLS: its close_notify exchange is the lingering
            return
        if not transport.get_write_buffer_size():
            self.flushed_since_s = now_s
        transport.write_eof()  # after what is buffered
        transport.resume_reading()


class Tunnel:
    """Two transports relaying to each other until both are closed; `done` resolves then."""

    def __init__(self, client: Conn, upstream: Conn, *, idle_timeout_s: float | None = None,
                 on_done: Callable[[Tunnel], None] | None = None,
                 loop: asyncio.AbstractEventLoop | None = None, timeouts: CloseTimeouts = DEFAULT_TIMEOUTS) -> None:
        assert client.transport is not None and upstream.transport is not None
        self._loop = loop or asyncio.get_running_loop()
        self._on_done = on_done
        self.done: asyncio.Future[None] = self._loop.create_future()
        self._open = 2
        self._counts = (0, 0)
        self._collected = False
        self.closing = False
        self._closing_since_s = 0.0
        self._timeouts = timeouts
        self.client_transport = client.transport
        self.upstream_transport = upstream.transport
        self._idle_timeout_s = idle_timeout_s
        self._timer: asyncio.TimerHandle | None = None
        self._last_total = -1
        # Bytes that arrived after the heads belong to the tunnel.
        pending_up, pending_down = client.take_buffer(), upstream.take_buffer()
        self._sides = (TunnelSide(self.client_transport, self.upstream_transport, self),
                       TunnelSide(self.upstream_transport, self.client_transport, self))
        self.client_transport.set_protocol(self._sides[0])
        self.upstream_transport.set_protocol(self._sides[1])
        if pending_up:
            self.upstream_transport.write(pending_up)
        if pending_down:
            self.client_transport.write(pending_down)
        client.resume_reading()
        upstream.resume_reading()
        # A side already gone before the switch would never call its new protocol: account for it now.
        for conn, side in zip((client, upstream), self._sides, strict=True):
            side.eof = conn.eof
            if conn.lost:
                side.lost = True
                if side.spare is not None:
                    side.spare.close()
                    side.spare = None
                self.side_lost()
        if client.eof or upstream.eof:
            self.begin_close()
        elif idle_timeout_s:
            self._timer = self._loop.call_later(idle_timeout_s, self._check_idle)

    def _read_counts(self) -> tuple[int | None, int | None]:
        return bytes_received(self.client_transport), bytes_received(self.upstream_transport)

    def collect(self) -> None:
        """Record the byte counts while both sockets are still open (the first call wins)."""
        if self._collected:
            return
        self._collected = True
        up, down = self._read_counts()
        self._counts = (up if up is not None else self._counts[0], down if down is not None else self._counts[1])

    @property
    def nbytes(self) -> tuple[int, int]:
        """Bytes received from the client and from the instance (handshake included), as last recorded."""
        return self._counts

    def _check_idle(self) -> None:
        up, down = self._read_counts()
        if up is None or down is None:
            return  # not TCP: idleness cannot be observed without counting every chunk
        self._counts = (up, down)
        if up + down == self._last_total:
            self.close()
            return
        self._last_total = up + down
        assert self._idle_timeout_s is not None
        self._timer = self._loop.call_later(self._idle_timeout_s, self._check_idle)

    def side_lost(self) -> None:
        """One transport is gone; when both are, the tunnel is done."""
        self._open -= 1
        if self._open <= 0 and not self.done.done():
            if self._timer is not None:
                self._timer.cancel()
            self.done.set_result(None)
            if self._on_done is not None:
                self._on_done(self)

    def begin_close(self) -> None:
        """Stop relaying and close each side the lingering way (idempotent)."""
        if self.closing:
            return
        self.closing = True
        self.collect()
        if self._timer is not None:
            self._timer.cancel()
        self._closing_since_s = now_s = self._loop.time()
        for side in self._sides:
            side.linger(now_s)
        if self._open > 0:
            self._timer = self._loop.call_later(self._timeouts.check_interval_s, self._check_closing)

    def _check_closing(self) -> None:
        now_s = self._loop.time()
        for side in self._sides:
            if side.lost:
                continue
            if side.flushed_since_s is None and not side.transport.get_write_buffer_size():
                side.flushed_since_s = now_s
            rule = verdict(self._timeouts, now_s=now_s, closing_since_s=self._closing_since_s,
                           flushed_since_s=side.flushed_since_s)
            if rule is Verdict.ABORT_TUNNEL:
                self.abort()
                return
            if rule is Verdict.CLOSE_SIDE:
                side.transport.abort()  # the flush is done: only unread input is dropped
        if self._open > 0:
            self._timer = self._loop.call_later(self._timeouts.check_interval_s, self._check_closing)

    def close(self) -> None:
        """Close both sides the lingering way (each gets what is pending for it first)."""
        self.begin_close()

    def abort(self) -> None:
        """Drop both sides at once."""
        self.collect()
        self.client_transport.abort()
        self.upstream_transport.abort()
