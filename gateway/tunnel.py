"""The opaque byte tunnel after a 101 in Python: each side's bytes go straight into the other side's transport.

Plain TCP tunnels normally go to the native relay thread instead (`native_relay`); this one carries TLS tunnels,
and all of them when the native module is not built or `wsgate.native-relay` is false. Both follow the same rules.

Frames are never parsed. Each side's `data_received` *is* the other transport's `write` (a bound method stored
on the protocol), so a chunk goes from the event loop's read callback into `write` without a Python frame of
ours in between. Backpressure is paired: when one transport's write buffer passes its high-water mark
(`pause_writing`), the other transport stops reading until it drains (`resume_writing`). EOF, close or error on
either side closes the other.

Nothing is counted per chunk: the bytes each side sent are read from the kernel (TCP_INFO's
`tcpi_bytes_received`, handshake included) when the tunnel ends or is checked for idleness.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import Callable

from gateway.conn import Conn

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


class TunnelSide(asyncio.BaseProtocol):
    """The protocol of one transport in a tunnel; `peer` is the other transport."""

    __slots__ = ("_tunnel", "data_received", "peer")

    def __init__(self, peer: asyncio.Transport, tunnel: Tunnel) -> None:
        self.peer = peer
        self.data_received: Callable[[bytes], object] = peer.write
        self._tunnel = tunnel

    def eof_received(self) -> bool:
        self._tunnel.collect()
        self.peer.close()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._tunnel.collect()
        self.peer.close()
        self._tunnel.side_lost()

    def pause_writing(self) -> None:
        self.peer.pause_reading()

    def resume_writing(self) -> None:
        if not self.peer.is_closing():
            self.peer.resume_reading()


class Tunnel:
    """Two transports relaying to each other until both are closed; `done` resolves then."""

    def __init__(self, client: Conn, upstream: Conn, *, idle_timeout_s: float | None = None,
                 on_done: Callable[[Tunnel], None] | None = None,
                 loop: asyncio.AbstractEventLoop | None = None) -> None:
        assert client.transport is not None and upstream.transport is not None
        self._loop = loop or asyncio.get_running_loop()
        self._on_done = on_done
        self.done: asyncio.Future[None] = self._loop.create_future()
        self._open = 2
        self._counts = (0, 0)
        self._collected = False
        self.client_transport = client.transport
        self.upstream_transport = upstream.transport
        self._idle_timeout_s = idle_timeout_s
        self._idle_handle: asyncio.TimerHandle | None = None
        self._last_total = -1
        # Bytes that arrived after the heads belong to the tunnel.
        pending_up, pending_down = client.take_buffer(), upstream.take_buffer()
        self.client_transport.set_protocol(TunnelSide(self.upstream_transport, self))
        self.upstream_transport.set_protocol(TunnelSide(self.client_transport, self))
        if pending_up:
            self.upstream_transport.write(pending_up)
        if pending_down:
            self.client_transport.write(pending_down)
        client.resume_reading()
        upstream.resume_reading()
        # A side already gone before the switch would never call its new protocol: account for it now.
        for conn in (client, upstream):
            if conn.lost:
                self.side_lost()
        if client.eof or upstream.eof:
            self.close()
        if idle_timeout_s:
            self._idle_handle = self._loop.call_later(idle_timeout_s, self._check_idle)

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
        self._idle_handle = self._loop.call_later(self._idle_timeout_s, self._check_idle)

    def side_lost(self) -> None:
        """One transport is gone; when both are, the tunnel is done."""
        self._open -= 1
        if self._open <= 0 and not self.done.done():
            if self._idle_handle is not None:
                self._idle_handle.cancel()
            self.done.set_result(None)
            if self._on_done is not None:
                self._on_done(self)

    def close(self) -> None:
        """Close both sides (each flushes what it has buffered)."""
        self.collect()
        self.client_transport.close()
        self.upstream_transport.close()

    def abort(self) -> None:
        """Drop both sides at once."""
        self.collect()
        self.client_transport.abort()
        self.upstream_transport.abort()
