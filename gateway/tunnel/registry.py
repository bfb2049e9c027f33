"""The open tunnels of one worker: handed to the native relay thread when possible, relayed in Python otherwise.

`Tunnels.start` is called with both connections right after the 101 has been written to the client;
`Tunnels.dial` lets the relay thread dial the instance and forward its 101 itself (`dial_fd`: for a client
connection the native HTTP lane hands over, without a transport). Either way this keeps the
balancer's per-instance counts and the tunnel metrics (upgrades, active tunnels, bytes each way) and forgets a
tunnel when it ends. The native relay thread (an epoll fd, two eventfds and a thread) starts when the worker
process listens (`prepare`; never in the supervisor that forks the workers) and stops in `close_all`.

Both relays end tunnels with the same lingering close (`gateway.tunnel.linger`, with this worker's `CloseTimeouts`);
`RELAY_KINDS` names them, and the tunnel tests run every case against each.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator

from gateway.discovery.base import Endpoint
from gateway.ops.metrics import Metrics
from gateway.ops.tasks import TaskSupervisor
from gateway.proxy.conn import Conn
from gateway.routing.balancer import Balancer
from gateway.tunnel import native as native_relay
from gateway.tunnel.linger import DEFAULT_TIMEOUTS, CloseTimeouts
from gateway.tunnel.native import DialResult, NativeRelay, NativeTunnel
from gateway.tunnel.python_relay import Tunnel

log = logging.getLogger("gateway.tunnels")

AnyTunnel = Tunnel | NativeTunnel
# The kernel's sockmap redirect (with the native thread), the native relay thread alone, uvloop transports (`Tunnel`)
RELAY_KINDS = ("sockmap", "native", "python")


def relay_line(relay: NativeRelay, *, asked: bool) -> str:
    """The worker's one log line saying which relay carries its plain-TCP tunnels (TLS ones: uvloop, always)."""
    if relay.sockmap:
        return "tunnel relay: sockmap (the kernel moves plain-TCP tunnels' bytes; the native thread keeps the rules)"
    why = relay.sockmap_why if asked else "wsgate.sockmap-relay is false"
    return f"tunnel relay: native thread (sockmap off: {why})"


class Tunnels:
    """A set of open tunnels (iterable, sized) plus the worker's relay thread."""

    def __init__(self, *, metrics: Metrics, balancer: Balancer, timeouts: CloseTimeouts = DEFAULT_TIMEOUTS) -> None:
        self._open: set[AnyTunnel] = set()
        self.live = self._open  # the same set, read-only for others: `len(tunnels.live)` runs no Python `__len__`
        self.timeouts = timeouts
        self.tasks: TaskSupervisor | None = None  # the worker's; set before `prepare` to supervise the relay's reader
        self._metrics = metrics
        self._balancer = balancer
        self._relay: NativeRelay | None = None
        self._relay_failed = False
        self.sockmap = True  # the worker's `wsgate.sockmap-relay`, read when the relay thread starts
        self.sockmap_after_reads = 0  # and its `wsgate.sockmap-after-reads`
        self._announced = False
        self._by_instance: dict[tuple[str, str], Series] = {}

    def __len__(self) -> int:
        self._sync()
        return len(self._open)

    def __iter__(self) -> Iterator[AnyTunnel]:
        self._sync()
        # A copy: a reap while the caller iterates (`list()` asks `__len__`, which syncs) changes the set.
        return iter(tuple(self._open))

    def _sync(self) -> None:
        """Take the relay's quiet reports first (the lane's own dials: gateway/tunnel/native.py), so whoever reads
        the registry sees every tunnel whose client has its 101 and none that has ended. (`live` does not: it is
        read per wake-up of the lane, which reaps first.)"""
        relay = self._relay
        if relay is not None and not relay.closed and relay.pending():
            relay.reap()

    def prepare(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start the relay thread now rather than with the first tunnel (a no-op without the native module)."""
        if self._native(loop) is None and not native_relay.available():
            self.announce("tunnel relay: Python (gateway._relay is not built)")

    def announce(self, line: str) -> None:
        """Log which relay carries this worker's tunnels, once."""
        if not self._announced:
            self._announced = True
            log.info("%s", line)

    def _native(self, loop: asyncio.AbstractEventLoop) -> NativeRelay | None:
        if self._relay is None and not self._relay_failed and native_relay.available():
            try:
                self._relay = NativeRelay(loop, timeouts=self.timeouts, tasks=self.tasks, sockmap=self.sockmap,
                                          sockmap_after_reads=self.sockmap_after_reads)
            except (OSError, RuntimeError) as exc:
                self._relay_failed = True
                log.warning("native relay unavailable, tunnels are relayed in Python: %s", exc)
            else:
                self.announce(relay_line(self._relay, asked=self.sockmap))
        return self._relay

    def native_relay(self, loop: asyncio.AbstractEventLoop | None) -> NativeRelay | None:
        """The worker's relay thread, or None (not built, failed to start, or no loop given)."""
        return self._native(loop) if loop is not None else None

    def _series(self, route_id: str, endpoint: Endpoint) -> Series:
        # Built once per route and instance: every upgrade counts into the same five series.
        series = self._by_instance.get((route_id, endpoint.address))
        if series is None:
            if len(self._by_instance) >= _MAX_SERIES:
                self._by_instance.clear()
            series = self._by_instance[(route_id, endpoint.address)] = Series(self, route_id, endpoint)
        return series

    def _finisher(self, route_id: str, endpoint: Endpoint) -> Callable[[AnyTunnel], None]:
        return self._series(route_id, endpoint).finished

    def _opened(self, route_id: str, endpoint: Endpoint) -> None:
        self._series(route_id, endpoint).opened()

    def dial(self, relay: NativeRelay, client: Conn, endpoint: Endpoint, request: bytes, *, route_id: str,
             idle_timeout_s: float | None, connect_timeout_s: float,
             response_timeout_s: float | None) -> asyncio.Future[DialResult] | None:
        """`NativeRelay.dial` for a route; a 101 makes the tunnel count as open (see there for the outcomes)."""

        def upgraded(tunnel: NativeTunnel) -> None:
            # Called from the relay's reaping, before its end can be: the tunnel is still open here.
            self._opened(route_id, endpoint)
            self._open.add(tunnel)

        return relay.dial(client, endpoint.host, endpoint.port, request, connect_timeout_s=connect_timeout_s,
                          response_timeout_s=response_timeout_s, idle_timeout_s=idle_timeout_s,
                          on_upgraded=upgraded, on_done=self._finisher(route_id, endpoint))

    def series(self, route_id: str, endpoint: Endpoint) -> Series:
        """What tunnels of `route_id` to `endpoint` count into: for a dial made elsewhere (the HTTP lane's upgrades,
        `NativeRelay.dial_fd` with `series.finished` as its `on_done`), which reports its tunnel with
        `Series.opened(tunnel)` before its end can be reported."""
        return self._series(route_id, endpoint)

    def start(self, client: Conn, upstream: Conn, *, route_id: str, endpoint: Endpoint,
              idle_timeout_s: float | None, native: bool, loop: asyncio.AbstractEventLoop | None) -> AnyTunnel:
        """Relay between `client` and `upstream` from now on; the tunnel is forgotten when it ends."""
        finished = self._finisher(route_id, endpoint)
        self._opened(route_id, endpoint)
        relay = self._native(loop) if native and loop is not None else None
        tunnel: AnyTunnel | None = None
        if relay is not None:
            tunnel = relay.adopt(client, upstream, idle_timeout_s=idle_timeout_s, on_done=finished)
        if tunnel is None:
            tunnel = Tunnel(client, upstream, idle_timeout_s=idle_timeout_s, on_done=finished, loop=loop,
                            timeouts=self.timeouts)
        if not tunnel.done.done():
            self._open.add(tunnel)
        return tunnel

    async def close_all(self, *, flush_timeout_s: float = 1.0) -> None:
        """Close every tunnel (each flushes what it has pending and lingers), then stop the relay thread.

        The lingering of each is cut short after `flush_timeout_s`: the worker is stopping."""
        for tunnel in list(self._open):
            tunnel.close()
        if closing := [t.done for t in self._open]:
            await asyncio.wait(closing, timeout=flush_timeout_s)
        for tunnel in list(self._open):
            if isinstance(tunnel, Tunnel):
                tunnel.abort()
        if self._relay is not None:
            self._relay.close()


_MAX_SERIES = 4096  # (route, instance) pairs kept; past it the cache starts afresh


class Series:
    """What the tunnels of one route to one instance count into: the balancer's count and five metric series."""

    __slots__ = ("_active", "_address", "_counts", "_down", "_open", "_up", "_upgrades", "endpoint")

    def __init__(self, tunnels: Tunnels, route_id: str, endpoint: Endpoint) -> None:
        self._open = tunnels._open
        # The balancer's per-address counts, kept here as `Balancer.acquire` and `release` do: two calls fewer a
        # handshake, which the HTTP lane's upgrades counted in.
        self._counts = tunnels._balancer.counts()
        self._address = endpoint.address
        metrics = tunnels._metrics
        self.endpoint = endpoint
        self._upgrades = metrics.series("wsgate_upgrades_total", route=route_id, instance=endpoint.address)
        self._active = metrics.series("wsgate_active_tunnels", route=route_id)
        self._up = metrics.series("wsgate_tunnel_bytes_total", route=route_id, direction="upstream")
        self._down = metrics.series("wsgate_tunnel_bytes_total", route=route_id, direction="downstream")

    def opened(self, tunnel: AnyTunnel | None = None) -> None:
        """One more tunnel open (`tunnel`: one dialed elsewhere, kept among the worker's open ones from now on)."""
        counts, address = self._counts, self._address
        counts[address] = counts.get(address, 0) + 1
        self._upgrades.value += 1
        self._active.value += 1
        if tunnel is not None:
            self._open.add(tunnel)

    def finished(self, tunnel: AnyTunnel) -> None:
        self._open.discard(tunnel)
        counts, address = self._counts, self._address
        left = counts.get(address, 0) - 1
        if left > 0:
            counts[address] = left
        else:
            counts.pop(address, None)
        up, down = tunnel.nbytes
        self._active.value -= 1
        self._up.value += up
        self._down.value += down
