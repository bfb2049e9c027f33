"""The gateway's listener: read a head, route it, dial an instance, then tunnel (101) or proxy HTTP.

Each accepted connection is a `client_conn.ClientConn` (an asyncio Protocol with a buffer) served by one coroutine until
its head is answered. After a 101 the coroutine ends and the two sockets go to the native relay thread
(`native_relay`, plain TCP) or relay to each other through their transports (`tunnel.Tunnel`, TLS or without the
native module); only the tunnel's small bookkeeping objects stay. A plain-TCP upgrade to an instance given by
address is dialed for the relay thread (`_upgrade_native`): the thread forwards the instance's 101 itself, and
only another answer comes back here. A routed request travels as one `exchange.Exchange` and ends in an
`exchange.Outcome`; instances are dialed in the balancer's order by `dialing.Dialer`. Discovery, balancing and
metrics come in through the constructor: this module knows no Consul.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Awaitable, Callable
from typing import Protocol

from gateway.config.model import RouteSpec, ServerSettings
from gateway.discovery.base import Endpoint, Provider
from gateway.errors import (
    BadGateway,
    BadRequest,
    GatewayError,
    NoRoute,
    Overloaded,
    RequestTimeout,
    UpstreamTimeout,
)
from gateway.model import Headers, RateLimit, RequestView
from gateway.ops.metrics import Metrics
from gateway.plugins import Response, run_plugin_filters
from gateway.proxy import native_http, policies
from gateway.proxy.accounting import Accounting
from gateway.proxy.client_conn import ClientConn
from gateway.proxy.conn import Conn
from gateway.proxy.dialing import Dialer
from gateway.proxy.exchange import CLOSE, TUNNEL, Exchange, Outcome, outcome_after, serves_next
from gateway.proxy.headers import authority, strip_hop_by_hop, upstream_request_headers
from gateway.proxy.http import (
    UpstreamPool,
    adopt_socket,
    buffered_body,
    check_request_body,
    read_response,
    relay_body,
)
from gateway.proxy.httpparse import (
    Framing,
    RequestHead,
    ResponseHead,
    keeps_alive_unread,
    parse_request_head,
    request_framing,
    response_framing,
    serialize_head,
)
from gateway.proxy.listener import apply_listen_options
from gateway.proxy.native_http import NativeHttp
from gateway.proxy.responses import error_body, rate_limit_refusal, simple_response
from gateway.ratelimit.bucket import RateDecision
from gateway.routing.balancer import Balancer
from gateway.routing.targets import RouteTarget, RoutingState
from gateway.tunnel.registry import Tunnels

log = logging.getLogger("gateway.server")

AdminHandler = Callable[[RequestHead], Awaitable[tuple[int, str, bytes]]]


class RateLimiter(Protocol):
    """Decides RequestRateLimiter filters (`ratelimit_redis.RedisRateLimiter` in production)."""

    async def check(self, route_id: str, limit: RateLimit, request: RequestView) -> RateDecision:
        """Take tokens for `request` from its bucket on `route_id`."""
        ...


class GatewayServer:
    """Accepts clients on one worker; routes, balances and relays their requests."""

    def __init__(self, state: RoutingState, *, provider: Provider, balancer: Balancer, metrics: Metrics,
                 admin: AdminHandler | None = None, upstream_ssl: ssl.SSLContext | None = None,
                 listen_ssl: ssl.SSLContext | None = None, rate_limiter: RateLimiter | None = None) -> None:
        self.state = state
        self.provider = provider
        self.balancer = balancer
        self.metrics = metrics
        self.admin = admin
        self.upstream_ssl = upstream_ssl
        self.listen_ssl = listen_ssl
        self.scheme = "https" if listen_ssl is not None else "http"
        self.rate_limiter = rate_limiter
        self.pool = UpstreamPool()
        self.connections: set[ClientConn] = set()
        self.tunnels = Tunnels(metrics=metrics, balancer=balancer)
        self._servers: list[asyncio.Server] = []
        self.draining = False
        self._targets: dict[str, RouteTarget] = {}
        self._targets_state: RoutingState | None = None
        self.accounting = Accounting(metrics, lambda: self.settings)
        self.dialer = Dialer(provider=provider, balancer=balancer, metrics=metrics, pool=self.pool,
                             tunnels=self.tunnels, upstream_ssl=upstream_ssl, settings=lambda: self.settings)
        self.breakers = policies.Breakers()  # CircuitBreaker state by id, kept across reloads
        self.native_http: NativeHttp | None = None  # the native HTTP lane, when it owns the listening socket
        metrics.gauge("wsgate_open_connections", lambda: float(len(self.connections) + self._lane_connections()))

    @property
    def settings(self) -> ServerSettings:
        return self.state.config.server

    # -- listening --------------------------------------------------------------------------------------
    async def start(self, host: str, port: int, *, reuse_port: bool = False) -> list[tuple[str, int]]:
        """Listen on host:port; returns the bound addresses (port 0 picks one)."""
        loop = asyncio.get_running_loop()
        bound = native_http.start_lane(self, loop, host, port, reuse_port=reuse_port)
        if bound is None:
            server = await loop.create_server(lambda: ClientConn(self, loop), host or None, port,
                                              ssl=self.listen_ssl, reuse_port=reuse_port, backlog=1024,
                                              reuse_address=True)
            for sock in server.sockets:
                apply_listen_options(sock, self.settings)
            self._servers.append(server)
        if self.settings.native_relay:
            # Started with the listener, so its three descriptors are part of the worker's baseline.
            self.tunnels.sockmap = self.settings.sockmap_relay
            self.tunnels.sockmap_after_reads = self.settings.sockmap_after_reads
            self.tunnels.prepare(loop)
        else:
            self.tunnels.announce("tunnel relay: Python (wsgate.native-relay is false)")
        return bound if bound is not None else [sock.getsockname()[:2] for sock in server.sockets]

    def _lane_connections(self) -> int:
        return self.native_http.count() if self.native_http is not None else 0

    def stop_accepting(self) -> None:
        """Close the listening sockets; open connections carry on."""
        for server in self._servers:
            server.close()
        if self.native_http is not None:
            self.native_http.drain()

    async def drain(self, timeout_s: float) -> None:
        """Stop accepting, let tunnels and requests finish for up to `timeout_s`, then close what is left."""
        self.draining = True
        self.stop_accepting()
        for conn in list(self.connections):
            if not self._busy(conn):
                conn.close()
        deadline = time.monotonic() + timeout_s
        while (self.tunnels or self.connections or self._lane_connections()) and time.monotonic() < deadline:
            waiters = [t.done for t in self.tunnels] + [c.task for c in self.connections
                                                          if c.task is not None and not c.task.done()]
            lane = self.native_http
            if lane is not None and lane.empty is not None and not lane.empty.done():
                waiters.append(lane.empty)
            if not waiters:
                break
            await asyncio.wait(waiters, timeout=max(0.0, deadline - time.monotonic()),
                               return_when=asyncio.FIRST_COMPLETED)
        for conn in list(self.connections):
            conn.close()
        if self.native_http is not None:
            self.native_http.close()
        self.pool.close()
        await self.tunnels.close_all()

    @staticmethod
    def _busy(conn: ClientConn) -> bool:
        # A connection whose serving task has ended (answered, perhaps lingering) has nothing left to finish.
        return (bool(conn.buffer) or conn.busy) and not (conn.task is not None and conn.task.done())

    # -- connections ------------------------------------------------------------------------------------
    def connection_opened(self, conn: ClientConn) -> bool:
        """Admit a connection; beyond max_connections (or while draining) answer 503, close it, return False."""
        self.connections.add(conn)
        opened = len(self.connections) + len(self.tunnels) + self._lane_connections()
        if opened > self.settings.max_connections or self.draining:
            self.refuse(conn, Overloaded("too many connections"))
            return False
        return True

    def refuse(self, conn: Conn, error: GatewayError) -> None:
        """Answer `error` and close (no request was read)."""
        self.accounting.refused(self._client_addr(conn), error.status, error)
        conn.write(simple_response(error.status, error_body(error, ""), close=True))
        if isinstance(conn, ClientConn):
            conn.close_lingering()
        else:
            conn.close()

    def connection_adopted(self, conn: ClientConn) -> None:
        """Take over a connection the native lane admitted and hands back in the middle of a request."""
        self.connections.add(conn)

    def connection_closed(self, conn: ClientConn) -> None:
        """Forget a closed connection."""
        self.connections.discard(conn)

    def _client_addr(self, conn: Conn) -> str:
        assert conn.transport is not None
        peer = conn.transport.get_extra_info("peername")
        return str(peer[0]) if isinstance(peer, tuple) and peer else "unknown"

    async def serve(self, conn: ClientConn, *, resume: Callable[[], Awaitable[Outcome]] | None = None) -> None:
        """Answer requests on `conn` until it closes or becomes a tunnel; `resume` first finishes a request the
        native lane handed back."""
        settings = self.settings
        first = resume is None
        conn.remote = remote = self._client_addr(conn)
        handed_over = False
        errored = False
        try:
            if resume is not None:
                conn.busy = True
                outcome = await resume()
                handed_over = outcome is TUNNEL
                if not serves_next(outcome, self.draining):
                    return
            while not conn.lost:
                conn.busy = False
                raw = conn.take_head(max_bytes=settings.max_head_bytes)
                if raw is not None:
                    pass
                elif conn.eof or len(conn.buffer) > settings.max_head_bytes:
                    raw = await conn.read_head(max_bytes=settings.max_head_bytes)  # returns without waiting
                else:
                    try:
                        async with asyncio.timeout(settings.head_timeout_s):
                            raw = await conn.read_head(max_bytes=settings.max_head_bytes)
                    except TimeoutError:
                        if first or conn.buffer:
                            raise RequestTimeout("request head not received in time") from None
                        return
                if raw is None:
                    return
                conn.busy = True
                first = False
                head = parse_request_head(raw)
                outcome = await self.handle(conn, head)
                handed_over = outcome is TUNNEL
                if not serves_next(outcome, self.draining):
                    return
        except GatewayError as error:
            # Errors before a route was chosen: bad, slow or oversized heads.
            self.accounting.refused(remote, error.status, error)
            conn.write(simple_response(error.status, error_body(error, ""), close=True))
            errored = True
        except (ConnectionError, OSError) as exc:
            log.debug("client connection failed: %s", exc)
        except Exception:
            log.exception("unexpected error serving %s", remote)
            conn.write(simple_response(500, error_body(GatewayError("internal error"), ""), close=True))
            errored = True
        finally:
            if not handed_over and (errored or conn.buffer):
                conn.close_lingering()  # the answer must not be lost to a reset caused by unread input
            elif not handed_over:
                conn.close()

    def route_target(self, route: RouteSpec) -> RouteTarget:
        """`route`'s dialing parameters under the configuration in force."""
        state = self.state
        if state is not self._targets_state:
            self._targets = {}
            self._targets_state = state
        target = self._targets.get(route.id)
        if target is None or target.route is not route:
            target = self._targets[route.id] = RouteTarget(route, state.config,
                                                           plain_listener=self.listen_ssl is None)
        return target

    # -- one request ------------------------------------------------------------------------------------
    async def handle(self, conn: ClientConn, head: RequestHead, *, failure: tuple[str, str] | None = None,
                     hops: int = 0) -> Outcome:
        """Answer one request. `failure`, `hops`: from a forward or a fallback (`policies`)."""
        started = time.monotonic()
        remote = conn.remote
        path, _, query = head.target.partition("?")
        if path == "/actuator" or path.startswith("/actuator/"):
            if self.admin is None:
                raise NoRoute("no route")
            if request_framing(head)[0] is not Framing.NONE:
                raise BadRequest("actuator requests take no body")
            status, ctype, body = await self.admin(head)
            conn.write(simple_response(status, body, content_type=ctype, close=not head.keep_alive))
            self.accounting.log(remote, head, status, "actuator", "-", started)
            return outcome_after(head.keep_alive)
        view = RequestView(head.method, path, query, head.headers, remote, self.scheme)
        state = self.state
        match = state.table.match(view)
        if match is None:
            self.accounting.count("-", 404)
            body = error_body(NoRoute("no route matches"), path)
            # A body we did not read would be taken for the next request: close instead.
            keep = keeps_alive_unread(head)
            conn.write(simple_response(404, body, close=not keep))
            self.accounting.log(remote, head, 404, "-", "-", started)
            return outcome_after(keep)
        route = match.route
        try:
            ex = Exchange(conn, head, view, route, match.plan(view, failure=failure), started,
                          view.is_websocket and head.method == "GET", hops)
            limit_headers: Headers = ()
            for limit in ex.plan.rate_limits:
                decision = await self._rate_decision(route.id, limit, view)
                limit_headers = (*limit_headers, *decision.headers)
                if not decision.allowed:
                    # 429, 403 for an empty key, 503 when Redis is down and fail-closed
                    keep = keeps_alive_unread(head)
                    self.accounting.answered(remote, head, decision.status, route.id, started)
                    conn.write(rate_limit_refusal(decision.status, head.path, limit_headers, close=not keep))
                    return outcome_after(keep)
            if match.has_plugins:
                ex.plan, answer = await run_plugin_filters(match.chain or route.filters, view, ex.plan, route.id)
                if answer is not None:
                    return self._answer_here(ex, answer)
            ex.extra_headers = limit_headers
            if policies.needed(route, ex.plan):
                return await policies.serve_policies(self, ex)
            return await self.forward(ex)
        except GatewayError as error:
            self.accounting.count(route.id, error.status)
            self.accounting.log(remote, head, error.status, route.id, "-", started)
            conn.write(simple_response(error.status, error_body(error, head.path), close=True))
            return CLOSE

    async def _rate_decision(self, route_id: str, limit: RateLimit, view: RequestView) -> RateDecision:
        if self.rate_limiter is None:
            # app.py always gives one when a route limits; an embedding without Redis lets requests through.
            return RateDecision(True)
        return await self.rate_limiter.check(route_id, limit, view)

    def _answer_here(self, ex: Exchange, answer: Response) -> Outcome:
        """Answer without dialing (a rate limiter's refusal, a plugin filter's own answer)."""
        self.accounting.answered(ex.view.remote_addr, ex.head, answer.status, ex.route.id, ex.started)
        body, ctype = answer.encoded()
        keep = keeps_alive_unread(ex.head)
        ex.conn.write(simple_response(answer.status, body, content_type=ctype, close=not keep, extra=answer.headers))
        return outcome_after(keep)

    async def forward(self, ex: Exchange) -> Outcome:
        """Send the request to an instance of its route and pass the answer on (one attempt under `policies`)."""
        conn, head, route, plan = ex.conn, ex.head, ex.route, ex.plan
        upgrade = ex.upgrade
        framing, length = request_framing(head)
        check_request_body(conn, framing, upgrade=upgrade)
        target = self.route_target(route)
        ex.response_timeout_s = timeout_s = policies.attempt_timeout(target.response_timeout_s)
        if (upgrade and target.native_dial and framing is Framing.NONE and not conn.buffer and not ex.extra_headers
                and not plan.response_headers):
            answered = await self._upgrade_native(ex, target)
            if answered is not None:
                return answered
        endpoint, upstream, reused = await self.dialer.connect(ex, target, pooled=not upgrade)
        plan_headers = plan.headers
        if framing is not Framing.NONE and (head.header("expect") or "").lower() == "100-continue":
            # Answer the client's wait ourselves: the body is streamed as soon as it comes.
            conn.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            plan_headers = tuple((k, v) for k, v in plan_headers if k.lower() != "expect")
        request_bytes = self._request_bytes(ex, plan_headers, endpoint, target)
        try:
            try:
                body = buffered_body(conn, framing, length)
                upstream.write(request_bytes if body is None else request_bytes + body)
                if body is None and framing is not Framing.NONE:
                    await relay_body(conn, upstream, framing, length, error=BadRequest, drain_timeout_s=timeout_s)
                response = await read_response(conn, upstream, timeout_s, upgrade=upgrade)
            except BadGateway:
                if not reused or framing is not Framing.NONE:
                    raise
                # A pooled connection the instance closed meanwhile: dial afresh once.
                upstream.close()
                endpoint, upstream, _ = await self.dialer.connect(ex, target, pooled=False)
                upstream.write(request_bytes)
                response = await read_response(conn, upstream, timeout_s, upgrade=upgrade)
        except BaseException as error:
            upstream.close()
            self.accounting.upstream_error(route, endpoint, error)
            raise
        return await self._answer(ex, upstream, response, endpoint)

    @staticmethod
    def _request_bytes(ex: Exchange, plan_headers: Headers, endpoint: Endpoint, target: RouteTarget) -> bytes:
        plan = ex.plan
        headers = upstream_request_headers(
            plan_headers, upgrade=ex.upgrade, client_addr=ex.view.remote_addr, proto=ex.view.scheme, prefix=plan.prefix,
            preserve_host=plan.preserve_host, upstream_authority=authority(endpoint.host, endpoint.port, target.scheme))
        return serialize_head(f"{ex.head.method} {plan.target} HTTP/1.1", headers)

    async def _upgrade_native(self, ex: Exchange, target: RouteTarget) -> Outcome | None:
        """A WebSocket upgrade whose dial, request and 101 the relay thread does (`Dialer.upgrade`).

        None, before anything was dialed, when it cannot be used here (no relay thread, an instance named by a
        host name rather than an address): the caller goes the ordinary way.
        """
        conn, route = ex.conn, ex.route
        relay = self.tunnels.native_relay(conn.loop)
        if relay is None:
            return None
        dialed = await self.dialer.upgrade(ex, target, relay,
                                           lambda endpoint: self._request_bytes(ex, ex.plan.headers, endpoint, target))
        if dialed is None:
            return None
        endpoint, result = dialed
        if result.tunnel is not None:
            self.accounting.count(route.id, 101)
            self.accounting.log(ex.view.remote_addr, ex.head, 101, route.id, endpoint.address, ex.started)
            self.connection_closed(conn)  # the client connection now belongs to the tunnel
            return TUNNEL
        return await self.answer_handed_back(ex, endpoint, result.upstream_fd, result.head, result.failure)

    async def answer_handed_back(self, ex: Exchange, endpoint: Endpoint, fd: int | None, data: bytes,
                                 failure: str | None) -> Outcome:
        """Go on with an attempt a native dial handed back (the relay thread's, the HTTP lane's): the instance's
        connection `fd` with `data` read from it, or no connection and why (`failure`)."""
        conn = ex.conn
        upstream: Conn | None = None
        try:
            if fd is None:
                if failure == "response-timeout":
                    raise UpstreamTimeout("instance did not answer in time")
                raise BadGateway("instance closed the connection without answering")
            loop = conn.loop or asyncio.get_running_loop()
            upstream = await adopt_socket(fd, data, loop=loop)
            response = await read_response(conn, upstream, ex.response_timeout_s, upgrade=ex.upgrade)
        except BaseException as error:
            if upstream is not None:
                upstream.close()
            self.accounting.upstream_error(ex.route, endpoint, error)
            raise
        return await self._answer(ex, upstream, response, endpoint)

    async def _answer(self, ex: Exchange, upstream: Conn, response: ResponseHead, endpoint: Endpoint) -> Outcome:
        """Pass the instance's final response head on: start the tunnel on a 101, relay the body otherwise."""
        conn, head, route, plan, extra_headers = ex.conn, ex.head, ex.route, ex.plan, ex.extra_headers
        upgrade = ex.upgrade
        policies.check_response(upstream, response.status)  # Retry or CircuitBreaker may still give this attempt up
        response_headers = (*response.headers, *extra_headers) if extra_headers else response.headers
        if plan.response_headers:
            response, response_headers = policies.edit_response(response, response_headers, plan)
        self.accounting.count(route.id, response.status)
        self.accounting.log(ex.view.remote_addr, head, response.status, route.id, endpoint.address, ex.started)
        if plan.body_edits and not (response.status == 101 and upgrade):
            return outcome_after(await policies.relay_buffered(ex, upstream, response, response_headers))
        if response.status == 101 and upgrade:
            conn.write(serialize_head(f"HTTP/1.1 101 {response.reason}", response_headers))
            self._start_tunnel(ex, upstream, endpoint)
            return TUNNEL
        return await self._relay_response(ex, upstream, response, response_headers, endpoint)

    async def _relay_response(self, ex: Exchange, upstream: Conn, response: ResponseHead, headers: Headers,
                              endpoint: Endpoint) -> Outcome:
        conn, head, route = ex.conn, ex.head, ex.route
        framing, length = response_framing(head.method, response)
        keep_client = head.keep_alive and framing is not Framing.UNTIL_CLOSE
        out = strip_hop_by_hop(headers)
        if not keep_client:
            out = (*out, ("Connection", "close"))
        head_bytes = serialize_head(f"HTTP/1.1 {response.status} {response.reason}", out)
        body = buffered_body(upstream, framing, length)
        if body is not None:
            conn.write(head_bytes + body)
            nbytes = length
        else:
            conn.write(head_bytes)
            try:
                nbytes = await relay_body(upstream, conn, framing, length, error=BadGateway,
                                          read_timeout_s=ex.response_timeout_s)
            except GatewayError as error:  # the client has the head already: close both, never pool a doubtful one
                upstream.close()
                conn.close()
                self.accounting.upstream_error(route, endpoint, error)
                return CLOSE
        self.metrics.add("wsgate_http_bytes_total", nbytes, route=route.id, direction="downstream")
        upstream_keep = (response.version == "HTTP/1.1" and framing is not Framing.UNTIL_CLOSE and not ex.upgrade
                         and "close" not in (response.header("connection") or "").lower())
        if upstream_keep and not upstream.buffer:
            self.pool.put(endpoint, upstream, tls=route.uri.tls)
        else:
            upstream.close()
        await conn.drain()
        return outcome_after(keep_client)

    def _start_tunnel(self, ex: Exchange, upstream: Conn, endpoint: Endpoint) -> None:
        # The client connection now belongs to the tunnel: it no longer counts as a plain connection.
        conn, route = ex.conn, ex.route
        self.connection_closed(conn)
        self.tunnels.start(conn, upstream, route_id=route.id, endpoint=endpoint,
                           idle_timeout_s=route.metadata.idle_timeout_s or self.settings.idle_timeout_s,
                           native=self.settings.native_relay, loop=conn.loop)
