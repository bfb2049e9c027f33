"""Dialing a route's instances: one loop over the balancer's order, two ways to dial an instance.

`Dialer.connect` dials from Python (`http.dial`, or an idle pooled connection); `Dialer.upgrade` has the relay
thread dial, send a WebSocket handshake and wait for its answer (`native.NativeRelay.dial`, plain TCP to an
address). Both go through `_in_order`: an instance that refuses or does not connect in time is counted, told to
the current attempt (`policies.note_dial_failure`, for Retry and CircuitBreaker) and skipped for the next; when
none is left the request fails with NoInstance (503).
"""

from __future__ import annotations

import logging
import os
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from gateway.config.model import ServerSettings
from gateway.discovery.base import Endpoint, Provider
from gateway.errors import NoInstance
from gateway.ops.metrics import Metrics
from gateway.proxy import policies
from gateway.proxy.conn import Conn
from gateway.proxy.exchange import Exchange
from gateway.proxy.http import UpstreamPool, dial
from gateway.routing.balancer import Balancer
from gateway.routing.targets import RouteTarget, ip_literal
from gateway.tunnel.native import DialResult, NativeRelay
from gateway.tunnel.registry import Tunnels

log = logging.getLogger("gateway.server")

_T = TypeVar("_T")


class DialFailed(Exception):
    """An instance could not be reached (`reason`: "timeout" or "refused"); the next one in order is tried."""

    def __init__(self, reason: str, detail: object) -> None:
        super().__init__(reason, detail)
        self.reason = reason
        self.detail = detail


@dataclass(slots=True)
class Dialer:
    """Dials instances for one worker: discovery, balancing, the keep-alive pool and the relay thread."""

    provider: Provider
    balancer: Balancer
    metrics: Metrics
    pool: UpstreamPool
    tunnels: Tunnels
    upstream_ssl: ssl.SSLContext | None
    settings: Callable[[], ServerSettings]  # read per call: a reload may change the idle timeout

    def endpoints(self, target: RouteTarget) -> tuple[Endpoint, ...]:
        """The instances `target` may dial now; NoInstance (503 naming the service) when there are none."""
        endpoints = self.provider.snapshot(target.service) if target.service is not None else target.endpoints
        if not endpoints:
            raise NoInstance(target.name)
        return tuple(endpoints)

    async def connect(self, ex: Exchange, target: RouteTarget, *, pooled: bool) -> tuple[Endpoint, Conn, bool]:
        """A connection to the first instance that takes one; returns (endpoint, connection, reused from pool)."""
        tls = target.tls
        tls_context = self.upstream_ssl if tls else None
        if tls and tls_context is None:
            tls_context = ssl.create_default_context()
        loop = ex.conn.loop
        pool = self.pool

        async def attempt(endpoint: Endpoint) -> tuple[Conn, bool]:
            if pooled:
                idle = pool.take(endpoint, tls=tls)
                if idle is not None:
                    return idle, True
            try:
                return await dial(endpoint, timeout_s=target.connect_timeout_s, ssl_context=tls_context,
                                  loop=loop), False
            except (OSError, TimeoutError) as exc:
                raise DialFailed("timeout" if isinstance(exc, TimeoutError) else "refused", exc) from None

        endpoint, (conn, reused) = await self._in_order(ex, target, self.endpoints(target), attempt)
        return endpoint, conn, reused

    async def upgrade(self, ex: Exchange, target: RouteTarget, relay: NativeRelay,
                      request: Callable[[Endpoint], bytes]) -> tuple[Endpoint, DialResult] | None:
        """Have the relay thread dial, send `request(endpoint)` and read the answer, instance by instance.

        The result is the instance's 101 (a tunnel, already running) or another answer to read here; None, before
        anything was dialed, when the relay thread cannot be used (an instance named by a host name rather than an
        address, or a client connection it cannot take).
        """
        endpoints = self.endpoints(target)
        if not all(ip_literal(endpoint.host) for endpoint in endpoints):
            return None
        route = ex.route
        idle_timeout_s = route.metadata.idle_timeout_s or self.settings().idle_timeout_s
        tunnels, conn = self.tunnels, ex.conn

        async def attempt(endpoint: Endpoint) -> DialResult | None:
            try:
                waiting = tunnels.dial(relay, conn, endpoint, request(endpoint), route_id=route.id,
                                       idle_timeout_s=idle_timeout_s, connect_timeout_s=target.relay_connect_s,
                                       response_timeout_s=ex.response_timeout_s)
            except OSError as exc:
                raise DialFailed("refused", exc) from None
            if waiting is None:
                return None
            result = await waiting
            if result.failure in ("refused", "connect-timeout"):
                reason = "timeout" if result.failure == "connect-timeout" else "refused"
                raise DialFailed(reason, os.strerror(result.errno) if result.errno else reason)
            return result

        endpoint, result = await self._in_order(ex, target, endpoints, attempt)
        return None if result is None else (endpoint, result)

    async def _in_order(self, ex: Exchange, target: RouteTarget, endpoints: tuple[Endpoint, ...],
                        attempt: Callable[[Endpoint], Awaitable[_T]]) -> tuple[Endpoint, _T]:
        """The one dial loop: `attempt` each instance in the balancer's order until one does not fail."""
        for endpoint in self.balancer.order(target.name, endpoints, target.choice, ex.view):
            try:
                return endpoint, await attempt(endpoint)
            except DialFailed as failed:
                policies.note_dial_failure(failed.reason)
                log.warning("dial %s for route %s failed (%s): %s", endpoint.address, ex.route.id, failed.reason,
                            failed.detail)
                self.metrics.add("wsgate_upstream_errors_total", 1, route=ex.route.id, instance=endpoint.address,
                                 reason=failed.reason)
        raise NoInstance(target.name)
