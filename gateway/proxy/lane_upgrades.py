"""WebSocket upgrades the native HTTP lane hands straight to the relay thread's dial: no client transport, no task.

Why: an upgrade the lane handed back whole (K_NEW) cost about 580k instructions, 21 times nginx's: a uvloop
transport for the client, the head parsed again, route, plan, a coroutine with its futures, then the relay's dial.
Here the lane replaces the client's Sec-WebSocket-Key by `MARK` in the head `decide` gets, so the routing decision
(`route`) is cached like any other; the lane hands the descriptor and the key back (K_UPGRADE), and `start` lends
the descriptor to the relay thread's dial with the instance's request (the thread owns it from the 101 on);
Python hears of it again in the relay's completion event.

An instance is picked per upgrade, as on the Python path: the balancer orders the instances each time (so `lb://`
routes and least-connections counts work as there), and a refused or timed-out connect moves on to the next one.
Anything else is the Python path's: a request it cannot decide here goes back whole (`fallback`), and an
instance's answer other than a 101, a response timeout or a close become a `ClientConn` served from there on
(`NativeHttp.resume_upgrade`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from gateway.config.model import RouteSpec
from gateway.discovery.base import Endpoint, SnapshotTable
from gateway.errors import GatewayError, NoInstance
from gateway.model import Balancing, ForwardPlan, RequestView
from gateway.ops.metrics import SeriesKey
from gateway.proxy import policies
from gateway.proxy.client_conn import ClientConn
from gateway.proxy.exchange import CLOSE, Exchange, Outcome
from gateway.proxy.headers import authority, upstream_request_headers
from gateway.proxy.httpparse import Framing, RequestHead, parse_request_head, request_framing, serialize_head
from gateway.proxy.responses import error_body, simple_response
from gateway.routing.table import RouteMatch
from gateway.routing.targets import RouteTarget, ip_literal, ipv4_int
from gateway.tunnel.native import DialResult, NativeRelay, NativeTunnel, ms
from gateway.tunnel.registry import Series, Tunnels

if TYPE_CHECKING:
    from gateway.proxy.server import GatewayServer

log = logging.getLogger("gateway.server")

# Stands for the client's key in the head `decide` gets (the lane puts it there: WS_KEY_MARK in gateway/_http.h; the
# lane checked the key is 1-64 base64 characters, nothing to escape) and in the instance's request kept per instance.
MARK = b"wsgate-lane-key-0000000000=="
_HASH = Balancing.HASH  # read once: on Python 3.11 `Balancing.HASH` goes through `EnumType.__getattr__`'s hook
_ROUND_ROBIN = Balancing.ROUND_ROBIN

# What the lane's C needs to place an upgrade itself (gateway/_http_upgrade.c, whose P_* name the fields): the relay's
# object, its table of lane dials, the two completion callbacks, the balancer's round-robin counters and this pool's
# key, discovery's table and the service's key in it (None, None: a fixed instance list), the instance set it was
# built for, one `PlanInstance` per instance in that set's order, and the connect, response and idle timeouts (ms).
DialPlan = tuple[Any, dict[int, Any], Callable[[Any, NativeTunnel], None], Callable[[Any, DialResult], None],
                 dict[str, int], str, dict[str, tuple[Endpoint, ...]] | None, str | None, tuple[Endpoint, ...],
                 tuple["PlanInstance", ...], int, int, int]
# (IPv4 address in network order, port, the request before the client's key, after it, on_done, series, endpoint).
PlanInstance = tuple[int, int, bytes, bytes, Callable[[NativeTunnel], None], Series, Endpoint]
# What a lane dial carries to its completion (made in C): (route, instance, its index in the set, the head as read,
# the client's key, the client's descriptor, when the head was complete, the instance set).
LaneArg = tuple["UpgradeRoute", PlanInstance, int, bytes, bytes, int, float, tuple[Endpoint, ...]]


def lane_route(server: GatewayServer, view: RequestView) -> tuple[RouteMatch, ForwardPlan] | None:
    """The match and plan of a request the lane may carry, or None for the Python path: no route, a plugin filter,
    a plan that fails, response headers to edit or a policy (Retry, CircuitBreaker ...)."""
    match = server.state.table.match(view)
    if match is None or match.has_plugins:
        return None
    try:
        plan = match.plan(view)
    except GatewayError:
        return None
    if plan.response_headers or policies.needed(match.route, plan):
        return None
    return match, plan


class UpgradeRoute:
    """How upgrades with one head (but for the key) from one address are routed: kept while the routing state
    stays and its routes are deterministic; the instance's request is kept per instance, cut where the key goes."""

    __slots__ = ("cached", "connect_ms", "counted", "dialing", "head", "idle_ms", "instances", "literal", "plan",
                 "remote", "response_ms", "route", "scheme", "target", "view")

    def __init__(self, head: RequestHead, view: RequestView, route: RouteSpec, plan: ForwardPlan,
                 target: RouteTarget, idle_timeout_s: float | None, counted: SeriesKey) -> None:
        self.counted = counted  # wsgate_requests_total for a 101 on this route
        self.head = head
        self.view = view
        self.remote = view.remote_addr
        self.scheme = view.scheme
        self.route = route
        self.plan = plan
        self.target = target
        self.idle_ms = ms(idle_timeout_s)  # the relay thread's timeouts, worked out once
        self.connect_ms = max(1, ms(target.relay_connect_s))
        self.response_ms = ms(target.response_timeout_s)
        self.instances: dict[str, tuple[bytes, bytes, Series] | None] = {}  # by address (an Endpoint hashes slowly)
        self.literal: tuple[Endpoint, ...] | None = None  # the instances last seen, when all are IP addresses
        # The lane's plan for the next upgrades (decide's answer holds this list; `LaneUpgrades.start` fills it),
        # made only for a decision the lane keeps (`cached`): one made afresh per upgrade would never be used.
        self.dialing: list[DialPlan | None] = [None]
        self.cached = False

    def instance(self, endpoint: Endpoint, tunnels: Tunnels) -> tuple[bytes, bytes, Series] | None:
        """The instance's request cut where the client's key goes, and the series its tunnels count into (one
        lookup per dial, by address); None when the marked key does not show exactly once."""
        try:
            return self.instances[endpoint.address]
        except KeyError:
            plan, target = self.plan, self.target
            headers = upstream_request_headers(
                plan.headers, upgrade=True, client_addr=self.remote, proto=self.scheme, prefix=plan.prefix,
                preserve_host=plan.preserve_host,
                upstream_authority=authority(endpoint.host, endpoint.port, target.scheme))
            pieces = serialize_head(f"{self.head.method} {plan.target} HTTP/1.1", headers).split(MARK)
            kept = (pieces[0], pieces[1], tunnels.series(self.route.id, endpoint)) if len(pieces) == 2 else None
            self.instances[endpoint.address] = kept
            return kept


class UpgradeCall:
    """One upgrade the lane hands over: its route, the client's key and head, and how far its dial got."""

    __slots__ = ("_head", "_view", "data", "endpoint", "fd", "key", "order", "series", "started", "upgrade")

    def __init__(self, upgrade: UpgradeRoute, key: bytes, data: bytes) -> None:
        self.upgrade = upgrade
        self.key = key
        self.data = data  # what the lane read from the client: the head, its CRLF CRLF, perhaps CRLFs before it
        self._head: RequestHead | None = None
        self._view: RequestView | None = None
        self.fd = -1  # the client's descriptor, once handed back
        self.started = 0.0
        self.order: list[Endpoint] = []  # the instances still to try, in the balancer's order
        self.endpoint: Endpoint | None = None  # the one being dialed
        self.series: Series | None = None  # what its tunnel counts into

    @property
    def head(self) -> RequestHead:
        """The client's own head (its key, not the mark): for the access log and an answer other than a 101."""
        if self._head is None:
            self._head = parse_request_head(self.data.strip(b"\r\n"))
        return self._head

    @property
    def view(self) -> RequestView:
        if self._view is None:
            head, base = self.head, self.upgrade.view
            self._view = RequestView(head.method, base.raw_path, base.query, head.headers, base.remote_addr,
                                     base.scheme)
        return self._view


class LaneUpgrades:
    """The upgrades of one worker's lane: their routing cache, and those whose dial has not ended (`pending`)."""

    def __init__(self, server: GatewayServer, loop: asyncio.AbstractEventLoop, *,
                 fallback: Callable[[UpgradeCall], None], ended: Callable[[], None]) -> None:
        self.server = server
        self.loop = loop
        self._fallback = fallback  # the Python path takes the connection whole (its head not answered yet)
        self._ended = ended  # a pending upgrade ended (the lane may have become empty)
        # Set by `NativeHttp.drain`: only a draining lane waits to be empty, so a 101 calls `ended` only then (a
        # Python call fewer per upgrade otherwise).
        self.draining = False
        self.pending: set[UpgradeCall] = set()
        self.upgraded = 0  # upgrades relayed this way (tests and benchmarks read it)
        self.settled = 0  # dials the lane started itself (`Lane.upgrades_dialed`) whose end Python heard
        self.relay: NativeRelay | None = None  # the worker's relay thread, once asked for
        # Bound once: the relay keeps them per dial (a bound method made per upgrade is an allocation more).
        self._on_upgraded = self._upgraded
        self._on_ended = self._dialed
        self._on_lane_upgraded = self._lane_upgraded
        self._on_lane_ended = self._lane_ended

    # -- decide: the lane's one call (through `NativeHttp.decide`, which caches what this returns) -------------
    def route(self, marked: bytes, remote: str) -> UpgradeRoute | None:
        """The decision `GatewayServer.handle` and `forward` would make for an upgrade whose key the lane replaced
        by `MARK` (None: not one this path takes; the Python path decides it)."""
        server = self.server
        try:
            head = parse_request_head(marked)
            framing, _ = request_framing(head)
        except GatewayError:
            return None
        path, _, query = head.target.partition("?")
        if framing is not Framing.NONE or head.method != "GET" or path == "/actuator" or path.startswith("/actuator/"):
            return None
        view = RequestView(head.method, path, query, head.headers, remote, server.scheme)
        routed = lane_route(server, view) if view.is_websocket else None
        if routed is None or routed[1].rate_limits:
            return None
        route, plan = routed[0].route, routed[1]
        target = server.route_target(route)
        if not target.native_dial:
            return None
        return UpgradeRoute(head, view, route, plan, target,
                            route.metadata.idle_timeout_s or server.settings.idle_timeout_s,
                            server.accounting.count_key(route.id, 101))

    # -- the hand-over ---------------------------------------------------------------------------------------
    def start(self, upgrade: UpgradeRoute, fd: int, data: bytes, key: bytes, started: float) -> None:
        """The lane handed the client's descriptor over (`data`: what it read, the head; `key`: the client's
        Sec-WebSocket-Key): order the instances and dial the first."""
        call = UpgradeCall(upgrade, key, data)
        call.fd, call.started = fd, started
        server = self.server
        target = upgrade.target
        relay = self.relay
        if relay is None or relay.closed:
            relay = self.relay = server.tunnels.native_relay(self.loop)
        # `Dialer.endpoints` without its frame (a snapshot is already a tuple; none left is the fallback's 503).
        service = target.service
        endpoints = server.dialer.provider.snapshot(service) if service is not None else target.endpoints
        if endpoints is not upgrade.literal:  # discovery's tuple stays the same object while nothing changes
            upgrade.literal = endpoints if endpoints and all(ip_literal(e.host) for e in endpoints) else None
        if relay is None or upgrade.literal is None:
            self._fallback(call)  # as `GatewayServer._upgrade_native` would: the ordinary way
            return
        view = call.view if target.choice.algorithm is _HASH else upgrade.view
        call.order = server.balancer.order(target.name, endpoints, target.choice, view)
        call.order.reverse()  # popped from the end
        self.pending.add(call)
        self._dial(call, relay)
        if upgrade.cached and not relay.closed:
            upgrade.dialing[0] = self._plan(upgrade, endpoints, relay)

    def _plan(self, upgrade: UpgradeRoute, endpoints: tuple[Endpoint, ...], relay: NativeRelay) -> DialPlan | None:
        """The lane's plan for the next upgrades of this decision, or None when they need Python: a balancer other
        than round robin (least connections counts, random and hash need Python per upgrade), an IPv6 instance, or
        instances that do not come from a discovery table or the route itself."""
        server, target = self.server, upgrade.target
        if target.choice.algorithm is not _ROUND_ROBIN:
            return None
        provider, service = server.dialer.provider, target.service
        table = None  # a fixed instance list: nothing to compare per upgrade
        if service is not None:
            if not isinstance(provider, SnapshotTable):
                return None
            table = provider.snapshots()
        instances: list[PlanInstance] = []
        for endpoint in endpoints:
            ip = ipv4_int(endpoint.host)
            kept = upgrade.instance(endpoint, server.tunnels)
            if ip is None or kept is None:
                return None
            before, after, series = kept
            instances.append((ip, endpoint.port, before, after, series.finished, series, endpoint))
        return (relay.handle, relay.lane_dials, self._on_lane_upgraded, self._on_lane_ended,
                server.balancer.round_robin_counters(), target.name, table, service, endpoints, tuple(instances),
                upgrade.connect_ms, upgrade.response_ms, upgrade.idle_ms)

    def _dial(self, call: UpgradeCall, relay: NativeRelay | None) -> None:
        server, upgrade = self.server, call.upgrade
        target = upgrade.target
        while call.order and relay is not None:
            endpoint = call.endpoint = call.order.pop()
            # Looked up here first (a call fewer per upgrade); `instance` makes it on the first dial to `endpoint`.
            instance = upgrade.instances.get(endpoint.address) or upgrade.instance(endpoint, server.tunnels)
            try:
                if instance is None:
                    raise RuntimeError("the key does not show once in the instance's request")
                before, after, series = instance
                call.series = series
                # The descriptor itself, not a duplicate: it stays ours until the 101 (a failure or a head to
                # answer leave it open), so no dup and close per upgrade.
                relay.dial_fd(call.fd, endpoint.host, endpoint.port, before + call.key + after, upgrade.connect_ms,
                              upgrade.response_ms, upgrade.idle_ms, self._on_upgraded, self._on_ended, call,
                              series.finished)
                return
            except OSError as exc:
                self._dial_failed(call, endpoint, "refused", exc)
            except (RuntimeError, ValueError):
                break
        else:
            if relay is not None:
                self._done(call)
                self._answer(call, None, NoInstance(target.name))
                return
        self._done(call)
        self._fallback(call)

    def _upgraded(self, call: UpgradeCall, tunnel: NativeTunnel) -> None:
        """The relay thread's dial forwarded the instance's 101 (from its completion reader)."""
        call.fd = -1  # the thread's from the 101 on (it may have closed it already: the number is not ours)
        upgrade, server = call.upgrade, self.server
        assert call.series is not None and call.endpoint is not None
        call.series.opened(tunnel)
        self.pending.discard(call)
        if self.draining and not self.pending:
            self._ended()
        self.upgraded += 1
        upgrade.counted.value += 1
        if server.state.config.server.access_log:  # `server.settings`, read without the property's call
            server.accounting.log(upgrade.remote, call.head, 101, upgrade.route.id, call.endpoint.address,
                                  call.started)

    # -- the lane's own dials (gateway/_http_upgrade.c) -------------------------------------------------------
    def _lane_upgraded(self, arg: LaneArg, tunnel: NativeTunnel) -> None:
        """`_upgraded` for a dial the lane started from a plan: no `UpgradeCall` unless the access log needs one."""
        upgrade, instance = arg[0], arg[1]
        instance[5].opened(tunnel)
        self.settled += 1
        if self.draining:
            self._ended()
        self.upgraded += 1
        upgrade.counted.value += 1
        if self.server.state.config.server.access_log:
            call = self._lane_call(arg)
            self.server.accounting.log(upgrade.remote, call.head, 101, upgrade.route.id, instance[6].address,
                                       call.started)

    def _lane_ended(self, arg: LaneArg, result: DialResult) -> None:
        """`_dialed` for a dial the lane started: the call it would have made, then the same way on."""
        call = self._lane_call(arg)
        self.settled += 1
        self.pending.add(call)
        self._dialed(call, result)

    @staticmethod
    def _lane_call(arg: LaneArg) -> UpgradeCall:
        """The `UpgradeCall` of a lane dial: its instance tried, the others left in the round-robin order."""
        upgrade, instance, index, data, key, fd, started, endpoints = arg
        call = UpgradeCall(upgrade, key, data)
        call.fd, call.started = fd, started
        call.endpoint, call.series = instance[6], instance[5]
        call.order = [*endpoints[index + 1:], *endpoints[:index]]
        call.order.reverse()  # popped from the end
        return call

    def _dialed(self, call: UpgradeCall, result: DialResult) -> None:
        """How the relay thread's dial ended otherwise: a failure, or an instance's head other than a 101."""
        endpoint = call.endpoint
        assert endpoint is not None
        if result.failure in ("refused", "connect-timeout"):
            reason = "timeout" if result.failure == "connect-timeout" else "refused"
            self._dial_failed(call, endpoint, reason, os.strerror(result.errno) if result.errno else reason)
            self._dial(call, self.server.tunnels.native_relay(self.loop))
            return
        self._done(call)
        if result.failure == "aborted":  # the relay stopped: the worker is going away
            os.close(call.fd)
            return
        self._answer(call, result, None)

    def _dial_failed(self, call: UpgradeCall, endpoint: Endpoint, reason: str, detail: object) -> None:
        # As `Dialer._in_order` (no Retry or CircuitBreaker here: routes with policies take the Python path).
        route_id = call.upgrade.route.id
        log.warning("dial %s for route %s failed (%s): %s", endpoint.address, route_id, reason, detail)
        self.server.metrics.add("wsgate_upstream_errors_total", 1, route=route_id, instance=endpoint.address,
                                reason=reason)

    def _done(self, call: UpgradeCall) -> None:
        self.pending.discard(call)
        self._ended()

    # -- the Python path answers -----------------------------------------------------------------------------
    def _answer(self, call: UpgradeCall, result: DialResult | None, error: GatewayError | None) -> None:
        """An instance's head other than a 101, a failure after the connect, or no instance left: the client gets
        a transport and the Python path answers (as `GatewayServer.answer_handed_back` does for its own dials)."""
        self.loop.create_task(self._serve(call, result, error))

    async def _serve(self, call: UpgradeCall, result: DialResult | None, error: GatewayError | None) -> None:
        server, loop = self.server, self.loop
        sock = socket.socket(fileno=call.fd)
        conn = ClientConn(server, loop, adopted=True)
        try:
            await loop.connect_accepted_socket(lambda: conn, sock)
        except BaseException:
            sock.close()
            if result is not None and result.upstream_fd is not None:
                os.close(result.upstream_fd)
            raise
        conn.task = asyncio.current_task()
        await server.serve(conn, resume=lambda: self._resume(conn, call, result, error))

    async def _resume(self, conn: ClientConn, call: UpgradeCall, result: DialResult | None,
                      error: GatewayError | None) -> Outcome:
        server, upgrade = self.server, call.upgrade
        route, head = upgrade.route, call.head
        ex = Exchange(conn, head, call.view, route, upgrade.plan, call.started, True)
        ex.response_timeout_s = upgrade.target.response_timeout_s
        try:
            if error is not None:
                raise error
            assert result is not None and call.endpoint is not None
            return await server.answer_handed_back(ex, call.endpoint, result.upstream_fd, result.head,
                                                   result.failure)
        except GatewayError as exc:
            server.accounting.count(route.id, exc.status)
            server.accounting.log(upgrade.remote, head, exc.status, route.id, "-", call.started)
            conn.write(simple_response(exc.status, error_body(exc, head.path), close=True))
            return CLOSE
