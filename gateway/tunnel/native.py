"""Tunnels handed to the native relay thread (`gateway._relay`, built from gateway/_relay.c when a compiler exists).

After a 101 on plain TCP both sockets are duplicated, given to the relay thread with whatever bytes arrived after
the heads, and the uvloop transports are closed (the duplicates keep the connections open). From then on no
Python runs for the tunnel until it ends: the thread reports finished tunnels through an eventfd this module
watches with `loop.add_reader`. `NativeTunnel` offers the same interface as `tunnel.Tunnel` (`done`, `nbytes`,
`close`, `abort`), so the server treats both alike; `NativeRelay.adopt` returns None when a connection cannot be
handed over (TLS, bytes still queued in a transport, a side already gone) and the caller keeps the Python tunnel.

`NativeRelay.dial` goes further for a WebSocket upgrade on plain TCP: the instance's socket is connected and the
request sent from here (in C, without a transport) and the thread reads the response head. A 101 goes to the client
as it came and the tunnel starts without the event loop ever holding a transport to the instance; any other head
(403, a redirect, a 101 the route rewrites) comes back with the instance's descriptor, and the server answers it
the ordinary way.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar

from gateway.ops.tasks import TaskSupervisor
from gateway.proxy.conn import Conn
from gateway.tunnel.linger import DEFAULT_TIMEOUTS, CloseTimeouts

if TYPE_CHECKING:
    from gateway._relay import Relay as _RelayType

log = logging.getLogger("gateway.relay")

_relay: ModuleType | None
try:
    from gateway import _relay
except ImportError:  # built without a compiler, or not on Linux
    _relay = None


class DialResult(NamedTuple):
    """How a `NativeRelay.dial` ended: exactly one of `tunnel`, `failure` or `upstream_fd` is set. (A named tuple:
    one is made per upgrade, and a frozen dataclass costs an `object.__setattr__` per field.)"""

    tunnel: NativeTunnel | None = None
    failure: str | None = None  # "refused", "connect-timeout", "response-timeout", "closed", "aborted"
    errno: int = 0
    upstream_fd: int | None = None  # the instance's connection, now the caller's to use and close
    head: bytes = b""  # what the instance sent so far (a complete head, or all it sent before closing)


_T = TypeVar("_T")
# A lane dial the thread has not ended: (its tunnel's on_done, upgraded(arg, tunnel), ended(arg, result), arg).
LaneDial = tuple[Callable[["NativeTunnel"], None], Callable[[Any, "NativeTunnel"], None],
                 Callable[[Any, DialResult], None], Any]

_FAILURES: dict[int, str] = {} if _relay is None else {
    _relay.FAIL_CONNECT: "refused", _relay.FAIL_CONNECT_TIMEOUT: "connect-timeout",
    _relay.FAIL_RESPONSE_TIMEOUT: "response-timeout", _relay.FAIL_CLOSED: "closed", _relay.FAIL_ABORTED: "aborted"}


def ms(seconds: float | None) -> int:
    """A timeout for the thread in whole milliseconds (0: none); a positive one never rounds down to none."""
    return max(1, round(seconds * 1000)) if seconds and seconds > 0 else 0


def available() -> bool:
    """Whether the native relay was built for this interpreter."""
    return _relay is not None


@functools.cache
def sockmap_supported() -> tuple[bool, str]:
    """Whether this process may hand tunnels to the kernel (gateway/_relay_sockmap.c), and why not: a relay thread
    is started with the sockmap and stopped again."""
    if _relay is None:
        return False, "gateway._relay is not built"
    relay: _RelayType = _relay.Relay(sockmap=True)
    try:
        return relay.sockmap()
    finally:
        relay.stop()


class NativeTunnel:
    """One tunnel owned by the relay thread; `done` resolves when both sockets are closed."""

    __slots__ = ("_done", "_loop", "_on_done", "_over", "_relay", "id", "nbytes")

    def __init__(self, relay: NativeRelay, tunnel_id: int, loop: asyncio.AbstractEventLoop,
                 on_done: Callable[[NativeTunnel], None] | None) -> None:
        self._relay = relay
        self.id = tunnel_id
        self._loop = loop
        self._done: asyncio.Future[None] | None = None
        self._over = False  # finished, or `done` cancelled by whoever awaited it
        self._on_done = on_done
        # Bytes received from the client and from the instance (handshake included), once finished (a slot, not
        # `Tunnel`'s property: read once per tunnel on the upgrade path).
        self.nbytes = (0, 0)

    @property
    def done(self) -> asyncio.Future[None]:
        """Made when first asked for: most tunnels end with nobody awaiting them (the HTTP lane's upgrades), and a
        uvloop future and its result cost 2,000 instructions a handshake."""
        if self._done is None:
            self._done = self._loop.create_future()
            if self._over:
                self._done.set_result(None)
        return self._done

    def _ended(self) -> bool:
        return self._over or (self._done is not None and self._done.done())

    def close(self) -> None:
        """Flush what is pending to each side, then close both the lingering way (`gateway.tunnel.linger`)."""
        if not self._ended():
            self._relay.command_close(self.id)

    def abort(self) -> None:
        """Close both sides at once."""
        if not self._ended():
            self._relay.command_abort(self.id)

    def finish(self, client_bytes: int, upstream_bytes: int) -> None:
        self.nbytes = (client_bytes, upstream_bytes)
        if self._over:
            return
        done = self._done
        if done is not None:
            if done.done():  # cancelled by whoever awaited it: ended as far as they are concerned
                self._over = True
                return
            done.set_result(None)
        self._over = True
        if self._on_done is not None:
            self._on_done(self)


def _plain_socket_fd(transport: asyncio.BaseTransport) -> int | None:
    if transport.get_extra_info("ssl_object") is not None:
        return None
    sock = transport.get_extra_info("socket")
    if sock is None:
        return None
    fd = sock.fileno()
    return fd if isinstance(fd, int) and fd >= 0 else None


REAPER = "relay-completions"  # the supervised duty that reads what the thread reports


class NativeRelay:
    """The relay thread of one worker process and the tunnels it carries.

    Its completion reader (`_reap`, called when the thread's eventfd is readable) is a duty of `tasks`: should
    handling an event raise, that event is dropped, the reader is detached, logged as failed and DOWN in
    `/actuator/health`, and attached again after a backoff; the events after the failed one wait for it.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, *, timeouts: CloseTimeouts = DEFAULT_TIMEOUTS,
                 tasks: TaskSupervisor | None = None, sockmap: bool = False, sockmap_after_reads: int = 0) -> None:
        if _relay is None:
            raise RuntimeError("gateway._relay is not built")
        self._loop = loop
        self._relay: _RelayType = _relay.Relay(**timeouts.native_ms(), sockmap=sockmap,
                                                  sockmap_after_reads=sockmap_after_reads)
        # Whether the kernel moves the bytes (gateway/_relay_sockmap.c), and why not when asked for and refused.
        self.sockmap, self.sockmap_why = self._relay.sockmap()
        self._tunnels: dict[int, NativeTunnel] = {}
        self._dials: dict[int, _Dial] = {}
        # The lane's dials by tunnel id: (on_done, upgraded, ended, arg), from `dial_fd` or from the lane's C
        # (gateway/_http_upgrade.c, which enters its own here: `lane_dials`).
        self._fd_dials: dict[int, LaneDial] = {}
        self.closed = False  # whether `close` ran (the thread is stopped: dials are refused); read per upgrade
        self._backlog: deque[tuple[int, int, int, int, bytes | None]] = deque()
        fd = self._relay.fileno()
        self._tasks = tasks or TaskSupervisor()
        self._reader = self._tasks.guard(
            REAPER, self._reap, loop=loop, detach=lambda: loop.remove_reader(fd),
            attach=lambda reader: None if self.closed else loop.add_reader(fd, reader))
        loop.add_reader(fd, self._reader)
        # The lane's own dials report their 101 and their end quietly (gateway/_relay_events.c, report_quiet): no
        # wake-up of the loop for them, but at the latest QUIET_REPORT_MS later. Whoever is awake anyway (the lane
        # on each of its wake-ups, a reader of the registry) asks `pending()` and reaps (bound once: no Python frame
        # for the question).
        self.pending: Callable[[], bool] = self._relay.pending
        self.reap: Callable[[], None] = self._reader

    def adopt(self, client: Conn, upstream: Conn, *, idle_timeout_s: float | None = None,
              on_done: Callable[[NativeTunnel], None] | None = None) -> NativeTunnel | None:
        """Hand both connections to the relay thread; None (nothing changed) when they cannot be."""
        if self.closed:
            return None
        ct, ut = client.transport, upstream.transport
        if ct is None or ut is None or client.lost or upstream.lost or client.eof or upstream.eof:
            return None
        # Bytes still queued in a transport cannot be taken out of it.
        if ct.is_closing() or ut.is_closing() or ct.get_write_buffer_size() or ut.get_write_buffer_size():
            return None
        client_fd, upstream_fd = _plain_socket_fd(ct), _plain_socket_fd(ut)
        if client_fd is None or upstream_fd is None:
            return None
        ct.pause_reading()
        ut.pause_reading()
        dups: list[int] = []
        try:
            for fd in (client_fd, upstream_fd):
                dups.append(os.dup(fd))
        except OSError as exc:  # EMFILE near the descriptor limit: the Python tunnel needs none
            for fd in dups:
                os.close(fd)
            log.warning("cannot hand a tunnel to the native relay: %s", exc)
            self._resume(client, upstream)
            return None
        fds = (dups[0], dups[1])
        to_upstream, to_client = bytes(client.buffer), bytes(upstream.buffer)
        try:
            tunnel_id = self._relay.add(fds[0], fds[1], to_client, to_upstream,
                                        idle_timeout_ms=ms(idle_timeout_s))
        except (OSError, RuntimeError, MemoryError, ValueError) as exc:
            for fd in fds:
                os.close(fd)
            log.warning("cannot hand a tunnel to the native relay: %s", exc)
            self._resume(client, upstream)
            return None
        client.buffer.clear()
        upstream.buffer.clear()
        tunnel = NativeTunnel(self, tunnel_id, self._loop, on_done)
        self._tunnels[tunnel_id] = tunnel
        # The duplicates keep both connections open: closing the transports only releases uvloop's handles.
        ct.close()
        ut.close()
        return tunnel

    def dial(self, client: Conn, host: str, port: int, request: bytes, *, connect_timeout_s: float,
             response_timeout_s: float | None, idle_timeout_s: float | None,
             on_upgraded: Callable[[NativeTunnel], None], on_done: Callable[[NativeTunnel], None],
             ) -> asyncio.Future[DialResult] | None:
        """Connect to host:port (an IP address), send `request` and let the thread read the answer for `client`.

        `client`'s buffer must be empty (nothing after its head).

        None when the client cannot be handed over. OSError when the connect fails at once (the client is
        untouched). Otherwise the client stops being read until the future resolves: with a tunnel (the 101 went
        to the client; `on_upgraded` has run, `on_done` runs when it ends, the client's transport is released),
        or with a failure or a head to answer, after which the client is read again.
        """
        if self.closed:
            return None
        ct = client.transport
        if ct is None or client.lost or client.eof or ct.is_closing() or ct.get_write_buffer_size():
            return None
        client_fd = _plain_socket_fd(ct)
        if client_fd is None:
            return None
        try:
            dup = os.dup(client_fd)
        except OSError as exc:
            log.warning("cannot hand a handshake to the native relay: %s", exc)
            return None
        try:
            tunnel_id = self._relay.dial(
                dup, host, port, request, connect_timeout_ms=max(1, ms(connect_timeout_s)),
                response_timeout_ms=ms(response_timeout_s), idle_timeout_ms=ms(idle_timeout_s))
        except BaseException:
            os.close(dup)
            raise
        ct.pause_reading()
        future: asyncio.Future[DialResult] = self._loop.create_future()
        tunnel = NativeTunnel(self, tunnel_id, self._loop, on_done)
        self._dials[tunnel_id] = _Dial(future, tunnel, client, on_upgraded)
        future.add_done_callback(lambda f: self.command_abort(tunnel_id) if f.cancelled() else None)
        return future

    def dial_fd(self, client_fd: int, host: str, port: int, request: bytes, connect_timeout_ms: int,
                response_timeout_ms: int, idle_timeout_ms: int, upgraded: Callable[[_T, NativeTunnel], None],
                ended: Callable[[_T, DialResult], None], arg: _T, on_done: Callable[[NativeTunnel], None], /) -> None:
        """`dial` for a client the event loop holds no transport for (the HTTP lane's, gateway/proxy/lane_upgrades.py).

        `client_fd` stays the caller's until the 101: a failure, a head to answer or an abort before the 101 leave
        it open; from `upgraded` on it is the thread's (no duplicate needed). From the completion reader,
        `upgraded(arg, tunnel)` when the 101 went to the client, else `ended(arg, result)`: a failure, or the
        instance's descriptor with a head to answer; nothing is paused or resumed. (Positional, with `arg` apart:
        no keywords to match, no partial and no DialResult made per upgrade.) OSError when the connect fails at
        once, RuntimeError when the relay is closed. The timeouts are in milliseconds (`ms`), worked out once per
        route by the caller; 0: none.
        """
        if self.closed:
            raise RuntimeError("the relay is closed")
        tunnel_id = self._relay.dial_fast(client_fd, host, port, request, connect_timeout_ms, response_timeout_ms,
                                          idle_timeout_ms)
        self._fd_dials[tunnel_id] = (on_done, upgraded, ended, arg)

    @property
    def handle(self) -> _RelayType:
        """The thread's own object, which the HTTP lane's C dials through (`gateway._relay._dial_api`)."""
        return self._relay

    @property
    def lane_dials(self) -> dict[int, LaneDial]:
        """The lane's dials not ended yet, by tunnel id: the lane's C enters those it starts itself here."""
        return self._fd_dials

    def _dial_ended(self, tunnel_id: int, kind: int, a: int, b: int, data: bytes | None) -> None:
        assert _relay is not None
        fd_dial = self._fd_dials.pop(tunnel_id, None)
        if fd_dial is not None:
            on_done, upgraded, ended, arg = fd_dial
            if kind == _relay.EV_UPGRADED:
                tunnel = self._tunnels[tunnel_id] = NativeTunnel(self, tunnel_id, self._loop, on_done)
                upgraded(arg, tunnel)
            elif kind == _relay.EV_HEAD:
                ended(arg, DialResult(upstream_fd=a, head=data or b""))
            else:
                ended(arg, DialResult(failure=_FAILURES.get(a, "aborted"), errno=b))
            return
        dial = self._dials.pop(tunnel_id, None)
        if kind == _relay.EV_UPGRADED:
            if dial is None:
                return
            self._tunnels[tunnel_id] = dial.tunnel
            ct = dial.client.transport
            if ct is not None:
                ct.close()  # the thread's duplicate keeps the connection open
            # Counted as open even when the caller gave up meanwhile: its abort is on the way and ends the tunnel
            # through `on_done` like any other.
            dial.on_upgraded(dial.tunnel)
            if not dial.future.done():
                dial.future.set_result(DialResult(tunnel=dial.tunnel))
            return
        if kind == _relay.EV_HEAD and (dial is None or dial.future.done()):
            os.close(a)
            return
        if dial is None:
            return
        ct = dial.client.transport
        if ct is not None and not ct.is_closing():
            ct.resume_reading()
        if dial.future.done():
            return
        if kind == _relay.EV_HEAD:
            dial.future.set_result(DialResult(upstream_fd=a, head=data or b""))
        else:
            dial.future.set_result(DialResult(failure=_FAILURES.get(a, "aborted"), errno=b))

    @staticmethod
    def _resume(client: Conn, upstream: Conn) -> None:
        for conn in (client, upstream):
            if conn.transport is not None and not conn.transport.is_closing():
                conn.transport.resume_reading()

    def stats(self) -> dict[str, int]:
        """The thread's counters (`gateway._relay.Relay.stats`): live tunnels, those handed to the kernel ..."""
        return self._relay.stats()

    def command_close(self, tunnel_id: int) -> None:
        if not self.closed:
            self._relay.close(tunnel_id)

    def command_abort(self, tunnel_id: int) -> None:
        if not self.closed:
            self._relay.abort(tunnel_id)

    def _reap(self) -> None:
        assert _relay is not None
        backlog, fd_dials, tunnels, upgraded = self._backlog, self._fd_dials, self._tunnels, _relay.EV_UPGRADED
        loop = self._loop
        backlog.extend(self._relay.reap())
        while backlog:
            tunnel_id, kind, a, b, data = backlog.popleft()
            if kind == upgraded:
                fd_dial = fd_dials.pop(tunnel_id, None)
                if fd_dial is not None:  # the HTTP lane's upgrade got its 101: the usual event
                    on_done, on_upgraded, _, arg = fd_dial
                    dialed = tunnels[tunnel_id] = NativeTunnel(self, tunnel_id, loop, on_done)
                    on_upgraded(arg, dialed)
                    continue
            if kind != _relay.EV_DONE:
                self._dial_ended(tunnel_id, kind, a, b, data)
                continue
            tunnel = tunnels.pop(tunnel_id, None)
            if tunnel is not None:
                tunnel.finish(a if a > 0 else 0, b if b > 0 else 0)  # not max(): it parses keywords, 700 instructions

    def close(self) -> None:
        """Abort every tunnel, stop the thread and resolve what is left (idempotent)."""
        if self.closed:
            return
        self.closed = True
        with contextlib.suppress(Exception):
            self._loop.remove_reader(self._relay.fileno())
        self._relay.stop()
        self._reader()
        self._tasks.cancel(REAPER)
        for tunnel in list(self._tunnels.values()):
            tunnel.finish(*tunnel.nbytes)
        self._tunnels.clear()
        assert _relay is not None
        for tunnel_id in [*self._dials, *self._fd_dials]:  # the thread stopped before it reported these
            self._dial_ended(tunnel_id, _relay.EV_FAILED, _relay.FAIL_ABORTED, 0, None)


@dataclass(slots=True)
class _Dial:
    """A dial the thread has not finished: its caller's future and what an upgrade needs."""

    future: asyncio.Future[DialResult]
    tunnel: NativeTunnel
    client: Conn
    on_upgraded: Callable[[NativeTunnel], None]
