"""The native HTTP lane on one worker (gateway/_http.c): its decide call, its accounting and its hand-backs.

With `wsgate.native-http` on and a plain-TCP listener on an address, the lane owns the listening socket: it
reads each request head in C and calls `decide` once per head. `decide` routes the request and applies its
filters exactly as `GatewayServer.handle` would; when the request is a plain forward (no rate limit, plugin,
policy, response or body edit, no upgrade, no chunked or large body, an instance given by an IPv4 address) it
returns the request head for the instance and the lane does the I/O: pooled connection, request, response head,
Content-Length body. Any other request, and anything unusual on the way (a failed connect, a response the lane
does not relay, a timeout), comes back to Python with the connection (`_handed_back`), and the Python path
answers it with its own rules, statuses and bodies and serves that connection from then on.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from types import ModuleType
from typing import TYPE_CHECKING

from gateway.errors import BadGateway, GatewayError, RequestTimeout, UpstreamTimeout
from gateway.model import RateLimit, RequestView
from gateway.proxy.client_conn import ClientConn
from gateway.proxy.exchange import CLOSE, Exchange, Outcome
from gateway.proxy.headers import authority, upstream_request_headers
from gateway.proxy.http import JOIN_MAX_BYTES
from gateway.proxy.httpparse import Framing, RequestHead, parse_request_head, request_framing, serialize_head
from gateway.proxy.lane_decided import Decided, deterministic
from gateway.proxy.lane_shapes import Refusal as _Refusal
from gateway.proxy.lane_shapes import Shape, make_shape, shape_prefixes, split_path
from gateway.proxy.lane_upgrades import MARK, DialPlan, LaneUpgrades, UpgradeCall, UpgradeRoute, lane_route
from gateway.proxy.listener import apply_listen_options
from gateway.proxy.responses import error_body, rate_limit_refusal, simple_response
from gateway.ratelimit.bucket import bucket_keys, lane_script_call, rate_limit_headers, resolve_key
from gateway.ratelimit.redis import TOKEN_BUCKET_SHA, RedisRateLimiter
from gateway.routing.table import ordered_filters
from gateway.routing.targets import RoutingState, ipv4_int

if TYPE_CHECKING:
    from gateway.proxy.server import GatewayServer

_http: ModuleType | None
try:
    from gateway import _http
except ImportError:  # built without a C compiler
    _http = None

log = logging.getLogger("gateway.server")
K_UPGRADE = -1 if _http is None else _http.K_UPGRADE

# A rate limit the lane runs itself (gateway/_http_redis.c): the EVALSHA command before and after ARGV[3] (now),
# the X-RateLimit-* lines after Remaining for an allowed request, the refusal's bytes before and after its
# Remaining line, the refusal's status, and the limiter's timeout in ms.
LaneLimit = tuple[bytes, bytes, bytes, bytes, bytes, int, int]
Decision = tuple["Decided", bytes, int, int, int, bool, bool, int, int, LaneLimit | None]
# An upgrade the relay thread dials (`Lane` hands its connection back as K_UPGRADE): only the first and last count.
UpgradeDecision = tuple[UpgradeRoute, bytes, int, int, int, bool, bool, int, int, None, bool, list[DialPlan | None]]
# Decisions kept per worker (the cache starts afresh when full). Small on purpose: entries that outlive a garbage
# collection reach the old generation and make full collections come more often. With every request's path its
# own (`python -m bench.http`, chain `unique`), p99 was 16.8 ms at 4096 entries, 7.1 ms at 512, 2.3 ms at 64; the
# repeated request costs the same at each size.
_MAX_CACHED = 64
_MAX_SHAPES_PER_HEAD = 4  # one per route prefix the same head was seen under


def available() -> bool:
    """Whether the native lane was built."""
    return _http is not None


def start_lane(server: GatewayServer, loop: asyncio.AbstractEventLoop, host: str, port: int, *,
               reuse_port: bool) -> list[tuple[str, int]] | None:
    """Listen through the lane when `wsgate.native-http` is on and it can (plain TCP on one IP address); the bound
    address, or None for the Python listener."""
    if not server.settings.native_http:
        return None
    family = next((f for f in (socket.AF_INET, socket.AF_INET6) if _is_address(f, host)), None)
    if not available() or server.listen_ssl is not None or family is None:
        log.info("HTTP lane: Python (the native lane needs gateway._http, plain TCP and an IP address to listen on)")
        return None
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        apply_listen_options(sock, server.settings)
        sock.listen(1024)
        bound: list[tuple[str, int]] = [sock.getsockname()[:2]]
        server.native_http = NativeHttp(server, loop)
        server.native_http.listen(sock)
    except BaseException:
        sock.close()
        raise
    log.info("HTTP lane: native (gateway._http)")
    return bound


def _is_address(family: int, host: str) -> bool:
    try:
        socket.inet_pton(family, host)
    except (OSError, ValueError):
        return False
    return True


def _ms(seconds: float | None) -> int:
    return 0 if seconds is None else max(1, round(seconds * 1000))


class NativeHttp:
    """The lane of one worker: owns its listening socket, reports to the server's accounting."""

    def __init__(self, server: GatewayServer, loop: asyncio.AbstractEventLoop) -> None:
        assert _http is not None
        self.server = server
        self.loop = loop
        self._settings = settings = server.settings
        self._run_state: RoutingState | None = server.state
        self.lane = _http.Lane(self.decide, head_timeout_ms=_ms(settings.head_timeout_s),
                               max_head_bytes=settings.max_head_bytes)
        self.lane.max_connections = settings.max_connections
        self.empty: asyncio.Future[None] | None = None  # set when the lane has no connection left while draining
        self._cache: dict[tuple[bytes, str], Decision | UpgradeDecision] = {}
        self._cache_state: RoutingState | None = None
        self._cacheable = False
        # Per (head without its path, client address): shapes of decisions made for one path, for the others.
        self._shapes: dict[tuple[bytes, str], list[tuple[Shape, Decision, _Refusal | None]]] = {}
        self._prefixes: dict[str, tuple[str, ...]] = {}
        self.shaped = 0  # decisions derived from a shape (tests and benchmarks read it)
        self._redis_address: tuple[str, int] | None = None  # what the lane was told (`Lane.redis`)
        self.upgrades = LaneUpgrades(server, loop, fallback=self._upgrade_fallback, ended=self._maybe_empty)
        loop.add_reader(self.lane.fileno(), self._run)
        self._listening: int | None = None  # the listening socket's descriptor, which the loop watches (`run(True)`)

    def listen(self, sock: socket.socket) -> None:
        """Accept on `sock` (bound and listening) from now on; the lane owns it, the loop watches it."""
        sock.setblocking(False)
        self.lane.listen(sock.fileno())
        fd = sock.detach()  # the lane's from here (a refusal above left it the caller's to close)
        self._listening = fd
        self.loop.add_reader(fd, self._run, True)

    def _stop_watching(self) -> None:
        """Forget the listening socket before the lane closes it (drain, close)."""
        if self._listening is not None:
            self.loop.remove_reader(self._listening)
            self._listening = None

    def count(self) -> int:
        """The lane's connections, and the upgrades whose relay dial has not ended."""
        return int(self.lane.count()) + self._dialing()

    def _dialing(self) -> int:
        """Upgrades whose relay dial has not ended: Python's, and those the lane dialed itself."""
        return len(self.upgrades.pending) + int(self.lane.upgrades_dialed) - self.upgrades.settled

    def drain(self) -> None:
        """Stop accepting; idle connections close now, the others after their answer."""
        self._stop_watching()
        self.lane.drain()
        self.upgrades.draining = True
        if self.count():
            self.empty = self.loop.create_future()

    def _maybe_empty(self) -> None:
        if self.empty is not None and not self.empty.done() and not self.count():
            self.empty.set_result(None)

    def close(self) -> None:
        self._stop_watching()
        self.loop.remove_reader(self.lane.fileno())
        self.lane.close()

    # -- the one Python call per request ------------------------------------------------------------------
    def decide(self, raw: bytes, remote: str) -> Decision | UpgradeDecision | None:
        """The lane's request as the instance gets it, or None for the Python path (see the module's comment).

        Decisions are cached by (head, client address) while the routing state stays and its routes are
        `deterministic`, for routes to a fixed address (a service's instances come from discovery and the
        balancer, per request): what the filters and the request head for the instance depend on is all in the
        key then. Any other decision is made afresh each time, unless a `Shape` of an earlier one for the same
        head but another path gives it (`gateway/proxy/lane_shapes.py`).
        """
        state = self.server.state
        if state is not self._cache_state:
            self._cache_state = state
            self._cache.clear()
            self._shapes.clear()
            self._cacheable = deterministic(state.table)
            self._prefixes = shape_prefixes(state.table.routes) if self._cacheable else {}
        key = (raw, remote)
        decision = self._cache.get(key)
        if decision is not None:
            # While Redis is failing the Python limiter decides at once (fail open or 503): its path.
            if decision[9] is not None and self._limiter_skipping():
                return None
            return decision
        if self._shapes:
            decision = self._shaped(raw, remote)
            if decision is not None:
                return decision
        if MARK in raw:  # a WebSocket upgrade: the relay thread dials it (gateway/proxy/lane_upgrades.py)
            upgrade = self.upgrades.route(raw, remote)
            if upgrade is None:
                return None
            # Cached for any route: the instance is picked per upgrade (by the lane from the plan `LaneUpgrades.start`
            # leaves in `upgrade.dialing`, else by `start`), not here.
            decided: UpgradeDecision = (upgrade, b"", 0, 0, 0, False, False, 0, 0, None, True, upgrade.dialing)
            if self._cacheable:
                if len(self._cache) >= _MAX_CACHED:
                    self._cache.clear()
                self._cache[key] = decided
                upgrade.cached = True
            return decided
        decision = self._decide(raw, remote)
        if decision is not None and self._cacheable and decision[0].target.service is None:
            # A limited decision's key (client address, a header, the Basic user) is in the cache key too.
            if len(self._cache) >= _MAX_CACHED:
                self._cache.clear()
            self._cache[key] = decision
            self._keep_shape(decision)
        return decision

    def _shaped(self, raw: bytes, remote: str) -> Decision | None:
        split = split_path(raw)
        if split is None:
            return None
        shapes = self._shapes.get((split[0], remote))
        if shapes is None:
            return None
        for shape, decision, refusal in shapes:
            request = shape.request(split[1])
            if request is not None:
                self.shaped += 1
                decided, limit = decision[0], decision[9]
                if limit is not None:  # the same bucket (lane_shapes: no key of a plugin's); the refusal names the path
                    parts = refusal.render(split[1]) if refusal is not None else self._refusal(
                        decided.plan.rate_limits[0], split[1].decode("latin-1"), decided.head.keep_alive)
                    limit = (*limit[:3], *parts, *limit[5:])
                return (Decided(raw, remote, decided.scheme, decided.match, decided.endpoint, decided.target,
                                decided.bytes_key), request, *decision[2:9], limit)
        return None

    def _keep_shape(self, decision: Decision) -> None:
        decided, request = decision[0], decision[1]
        prefixes = self._prefixes.get(decided.route.id)
        if prefixes is None or decided.match.variables:
            return
        match = decided.match
        chain = match.chain
        if chain is None:
            chain = tuple(f for _, f in ordered_filters(match.default_filters, match.route.filters))
        shape = make_shape(prefixes, chain, decided.head.method, decided.view.raw_path, request)
        split = split_path(decided.raw)
        if shape is None or split is None:
            return
        if len(self._shapes) >= _MAX_CACHED:
            self._shapes.clear()
        shapes = self._shapes.setdefault((split[0], decided.remote), [])
        if len(shapes) < _MAX_SHAPES_PER_HEAD and all(s.prefix != shape.prefix for s, _, _ in shapes):
            refusal = None
            if decision[9] is not None:
                limit, keep_alive, path = decided.plan.rate_limits[0], decided.head.keep_alive, decided.head.path
                refusal = _Refusal(*self._refusal(limit, _Refusal.MARK, keep_alive))
                if refusal.render(path.encode("latin-1")) != self._refusal(limit, path, keep_alive):
                    refusal = None  # rendered whole for each path then
            shapes.append((shape, decision, refusal))

    def _decide(self, raw: bytes, remote: str) -> Decision | None:
        server = self.server
        try:
            head = parse_request_head(raw)
            framing, length = request_framing(head)
        except GatewayError:
            return None  # answered by the Python path (400)
        if framing is Framing.CHUNKED or length > JOIN_MAX_BYTES or head.header("expect") is not None:
            return None
        if head.header("upgrade") is not None:
            return None
        path, _, query = head.target.partition("?")
        if path == "/actuator" or path.startswith("/actuator/"):
            return None
        view = RequestView(head.method, path, query, head.headers, remote, server.scheme)
        routed = lane_route(server, view)
        if routed is None or routed[1].body_edits:
            return None
        match, plan = routed
        route = match.route
        limit = None
        if plan.rate_limits:
            limit = self._lane_limit(route.id, plan.rate_limits, view, head, framing)
            if limit is None:
                return None
        target = server.route_target(route)
        if target.tls:
            return None
        try:
            endpoints = server.dialer.endpoints(target)
        except GatewayError:
            return None
        endpoint = next(iter(server.balancer.order(target.name, endpoints, target.choice, view)))
        ip = ipv4_int(endpoint.host)
        if ip is None:
            return None
        headers = upstream_request_headers(
            plan.headers, upgrade=False, client_addr=remote, proto=server.scheme, prefix=plan.prefix,
            preserve_host=plan.preserve_host,
            upstream_authority=authority(endpoint.host, endpoint.port, target.scheme))
        request = serialize_head(f"{head.method} {plan.target} HTTP/1.1", headers)
        decided = Decided(raw, remote, server.scheme, match, endpoint, target,
                          server.metrics.series("wsgate_http_bytes_total", route=route.id, direction="downstream"),
                          head=head, view=view, plan=plan)
        return (decided, request, ip, endpoint.port, length, head.keep_alive, head.method == "HEAD",
                _ms(target.connect_timeout_s), _ms(target.response_timeout_s), limit)

    def _limiter_skipping(self) -> bool:
        limiter = self.server.rate_limiter
        return isinstance(limiter, RedisRateLimiter) and limiter.skipping()

    def _lane_limit(self, route_id: str, limits: tuple[RateLimit, ...], view: RequestView, head: RequestHead,
                    framing: Framing) -> LaneLimit | None:
        """The request's RequestRateLimiter as the lane runs it, or None for the Python path: more than one
        limiter, a body (Python decides whether the refused connection stays), a plugin's key resolver or an empty
        key, a Redis the lane does not speak to (`RedisRateLimiter.lane_redis`), or one failing now."""
        limiter = self.server.rate_limiter
        if len(limits) != 1 or framing is not Framing.NONE or not isinstance(limiter, RedisRateLimiter):
            return None
        limit = limits[0]
        lane_redis = limiter.lane_redis()
        if lane_redis is None or limit.key.startswith("plugin:") or limiter.skipping():
            return None
        key = resolve_key(limit, view)
        if not key:
            return None
        address = (lane_redis.host, lane_redis.port)
        if address != self._redis_address:
            ip = ipv4_int(lane_redis.host)
            assert ip is not None  # lane_address gives IPv4 addresses only
            self.lane.redis(ip=ip, port=lane_redis.port)
            self._redis_address = address
        before, after = lane_script_call(TOKEN_BUCKET_SHA, bucket_keys(route_id, key, key_prefix=lane_redis.key_prefix),
                                         limit)
        tail = b"".join(f"{name}: {value}\r\n".encode("latin-1") for name, value in rate_limit_headers(limit, 0)[1:])
        return (before, after, tail, *self._refusal(limit, head.path, head.keep_alive), limit.status_code,
                lane_redis.timeout_ms)

    @staticmethod
    def _refusal(limit: RateLimit, path: str, keep_alive: bool) -> tuple[bytes, bytes]:
        """The Python path's refusal, cut where its X-RateLimit-Remaining line goes (the lane writes it)."""
        marker = "\x00remaining\x00"
        headers = rate_limit_headers(limit, 0)
        refusal = rate_limit_refusal(limit.status_code, path, ((headers[0][0], marker), *headers[1:]),
                                     close=not keep_alive)
        refused_head, _, refused_tail = refusal.partition(f"{headers[0][0]}: {marker}\r\n".encode("latin-1"))
        return refused_head, refused_tail

    # -- what the lane reports ----------------------------------------------------------------------------
    def _run(self, accept: bool = False) -> None:
        # Runs a few times per handshake: the settings are looked at when the routing state changes (`settings` is
        # `state.config.server`), the others' count only under a connection limit (the lane reads it only then).
        # `accept`: the listening socket is readable (the lane's own epoll set is looked at on its own wake-ups).
        server = self.server
        state = server.state
        if state is not self._run_state:
            self._run_state = state
            settings = state.config.server
            if settings is not self._settings:  # a reload
                self._settings = settings
                lane = self.lane
                lane.configure(head_timeout_ms=_ms(settings.head_timeout_s), max_head_bytes=settings.max_head_bytes)
                lane.max_connections = settings.max_connections
        settings, lane = self._settings, self.lane
        relay = self.upgrades.relay
        if relay is not None and relay.pending():  # the quiet reports of the lane's own dials, while awake anyway
            relay.reap()
        if lane.max_connections:
            upgrades = self.upgrades  # `_dialing()` without its frame: this runs per wake-up
            lane.outside = (len(server.connections) + len(server.tunnels.live) + len(upgrades.pending)
                            + lane.upgrades_dialed - upgrades.settled)
        done, handbacks = lane.run(accept)
        if done:
            accounting, logging_on = server.accounting, settings.access_log
            for decided, status, nbytes, failed, started in done:
                route = decided.route
                accounting.count(route.id, status)
                if logging_on:  # failed 4: the lane's rate-limit refusal, no instance (Accounting.answered)
                    accounting.log(decided.remote, decided.head, status, route.id,
                                   "-" if failed == 4 else decided.endpoint.address, started)
                if failed == 4:
                    continue
                if failed == 1:
                    accounting.upstream_error(route, decided.endpoint, UpstreamTimeout("instance stopped sending"))
                elif failed == 2:
                    accounting.upstream_error(route, decided.endpoint, BadGateway("connection closed inside a body"))
                else:
                    decided.bytes_key.value += nbytes
        for kind, decided, cfd, cdata, ufd, udata, started, limited in handbacks:
            if kind == K_UPGRADE:  # `udata` is the client's key then
                self.upgrades.start(decided, cfd, cdata, udata, started)
            else:
                self.loop.create_task(self._handed_back(kind, decided, cfd, cdata, ufd, udata, started, limited))
        if self.empty is not None:
            self._maybe_empty()

    def _upgrade_fallback(self, call: UpgradeCall) -> None:
        """An upgrade the relay thread cannot dial after all: the Python path takes its connection whole."""
        assert _http is not None
        self.loop.create_task(self._handed_back(_http.K_NEW, None, call.fd, call.data, -1, b"", call.started, b""))

    async def _handed_back(self, kind: int, decided: Decided | None, cfd: int, cdata: bytes, ufd: int,
                           udata: bytes, started: float, limited: bytes) -> None:
        assert _http is not None
        server = self.server
        sock = socket.socket(fileno=cfd)
        if kind == _http.K_LIMIT_TIMEOUT:
            limiter = server.rate_limiter
            if isinstance(limiter, RedisRateLimiter):
                limiter.note_lane_timeout()
            kind = _http.K_NEW  # the Python path decides it afresh, Redis now skipped as after its own timeout
        conn = ClientConn(server, self.loop, adopted=kind != _http.K_NEW)
        conn.buffer += cdata
        try:
            await self.loop.connect_accepted_socket(lambda: conn, sock)
        except BaseException:
            sock.close()
            if ufd >= 0:
                socket.socket(fileno=ufd).close()
            raise
        if kind == _http.K_NEW:
            conn.check_first_head()
        elif kind == _http.K_HEAD_TIMEOUT:
            server.refuse(conn, RequestTimeout("request head not received in time"))
        elif kind == _http.K_LINGER:
            conn.close_lingering()
        else:
            assert decided is not None
            conn.task = asyncio.current_task()
            await server.serve(conn, resume=lambda: self._resume(conn, kind, decided, ufd, udata, started, limited))

    async def _resume(self, conn: ClientConn, kind: int, decided: Decided, ufd: int, udata: bytes,
                      started: float, limited: bytes) -> Outcome:
        """Go on with a request the lane gave back, where it left it (the error handling of `handle`)."""
        assert _http is not None
        server, route = self.server, decided.route
        ex = Exchange(conn, decided.head, decided.view, route, decided.plan, started, False)
        ex.response_timeout_s = decided.target.response_timeout_s
        if limited:  # Redis allowed it in the lane: its X-RateLimit-* go on the answer, as on the Python path
            lines = limited.decode("latin-1").split("\r\n")
            pairs = (line.partition(": ") for line in lines if line)
            ex.extra_headers = tuple((name, value) for name, _, value in pairs)
        try:
            if kind == _http.K_FORWARD:
                return await server.forward(ex)
            failure = "response-timeout" if kind == _http.K_TIMEOUT else "closed"
            return await server.answer_handed_back(ex, decided.endpoint, ufd if ufd >= 0 else None, udata, failure)
        except GatewayError as error:
            server.accounting.count(route.id, error.status)
            server.accounting.log(decided.view.remote_addr, decided.head, error.status, route.id, "-", started)
            conn.write(simple_response(error.status, error_body(error, decided.head.path), close=True))
            return CLOSE
