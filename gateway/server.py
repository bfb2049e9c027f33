"""The gateway's listener: read a head, route it, dial an instance, then tunnel (101) or proxy HTTP.

Each accepted connection is a `ClientConn` (an asyncio Protocol with a buffer) served by one coroutine until
its head is answered. After a 101 the coroutine ends and the two sockets go to the native relay thread
(`native_relay`, plain TCP) or relay to each other through their transports (`tunnel.Tunnel`, TLS or without the
native module); only the tunnel's small bookkeeping objects stay. Discovery, balancing and metrics come in
through the constructor: this module knows no Consul.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Protocol

from gateway import native_relay
from gateway.balancer import Balancer
from gateway.config import GatewayConfig, RouteSpec, ServerSettings
from gateway.conn import Conn
from gateway.discovery.base import Endpoint, Provider
from gateway.errors import (
    BadGateway,
    BadRequest,
    GatewayError,
    NoInstance,
    NoRoute,
    Overloaded,
    RequestTimeout,
    UpstreamTimeout,
)
from gateway.headers import authority, strip_hop_by_hop, upstream_request_headers
from gateway.http_proxy import UpstreamPool, dial, relay_body
from gateway.httpparse import (
    HEAD_END,
    Framing,
    RequestHead,
    ResponseHead,
    parse_request_head,
    parse_response_head,
    request_framing,
    response_framing,
    serialize_head,
)
from gateway.metrics import Metrics
from gateway.model import ForwardPlan, Headers, RateLimit, RequestView
from gateway.native_relay import NativeRelay, NativeTunnel
from gateway.ratelimit import RateDecision
from gateway.routing import RouteTable, apply_header_ops
from gateway.tunnel import Tunnel

log = logging.getLogger("gateway.server")
access_log = logging.getLogger("gateway.access")

MAX_RESPONSE_HEAD_BYTES = 64 * 1024
AdminHandler = Callable[[RequestHead], Awaitable[tuple[int, str, bytes]]]


class RateLimiter(Protocol):
    """Decides RequestRateLimiter filters (`ratelimit_redis.RedisRateLimiter` in production)."""

    async def check(self, route_id: str, limit: RateLimit, request: RequestView) -> RateDecision:
        """Take tokens for `request` from its bucket on `route_id`."""
        ...


@dataclass(frozen=True, slots=True)
class RoutingState:
    """The configuration in force and its compiled route table (replaced as a whole on reload)."""

    config: GatewayConfig
    table: RouteTable


def error_body(error: GatewayError, path: str) -> bytes:
    """The JSON body of an error answer (SCG-like fields; `service` when no instance was available)."""
    body: dict[str, object] = {"status": error.status, "error": HTTPStatus(error.status).phrase,
                               "message": str(error), "path": path}
    if isinstance(error, NoInstance):
        body["service"] = error.service
    return json.dumps(body).encode()


def simple_response(status: int, body: bytes, *, content_type: str = "application/json",
                    close: bool = False, extra: Headers = ()) -> bytes:
    """A complete response with a Content-Length body."""
    headers: list[tuple[str, str]] = [("Content-Type", content_type), ("Content-Length", str(len(body)))]
    headers.extend(extra)
    if close:
        headers.append(("Connection", "close"))
    return serialize_head(f"HTTP/1.1 {status} {HTTPStatus(status).phrase}", tuple(headers)) + body


class ClientConn(Conn):
    """An accepted client connection.

    Its serving coroutine starts only once the first head is complete (or the client gave up or sent too much):
    most connections send their whole head at once, so no task waits on an empty socket, and the first head's
    timeout is a plain timer rather than a timeout scope.
    """

    def __init__(self, server: GatewayServer, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(loop)
        self.server = server
        self.busy = False  # between reading a head and finishing its answer
        self.task: asyncio.Task[None] | None = None
        self._head_timer: asyncio.TimerHandle | None = None
        self._scan_from = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        if self.server.connection_opened(self):
            timeout_s = self.server.settings.head_timeout_s
            assert self._loop is not None
            self._head_timer = self._loop.call_later(timeout_s, self._first_head_late)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._head_timer is not None:
            if (self.buffer.find(HEAD_END, self._scan_from) >= 0
                    or len(self.buffer) > self.server.settings.max_head_bytes):
                self._start()
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
        self.server.connection_closed(self)

    def _start(self) -> None:
        assert self._head_timer is not None
        self._head_timer.cancel()
        self._head_timer = None
        assert self._loop is not None
        self.task = self._loop.create_task(self.server.serve(self))

    def _first_head_late(self) -> None:
        self._head_timer = None
        self.server.refuse(self, RequestTimeout("request head not received in time"))


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
        self.rate_limiter = rate_limiter
        self.pool = UpstreamPool()
        self.connections: set[ClientConn] = set()
        self.tunnels: set[Tunnel | NativeTunnel] = set()
        self._relay: NativeRelay | None = None
        self._relay_failed = False
        self._servers: list[asyncio.Server] = []
        self.draining = False
        metrics.gauge("wsgate_open_connections", lambda: float(len(self.connections)))

    @property
    def settings(self) -> ServerSettings:
        return self.state.config.server

    # -- listening --------------------------------------------------------------------------------------
    async def start(self, host: str, port: int, *, reuse_port: bool = False) -> list[tuple[str, int]]:
        """Listen on host:port; returns the bound addresses (port 0 picks one)."""
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: ClientConn(self, loop), host or None, port, ssl=self.listen_ssl,
                                          reuse_port=reuse_port, backlog=1024, reuse_address=True)
        self._servers.append(server)
        return [sock.getsockname()[:2] for sock in server.sockets]

    def stop_accepting(self) -> None:
        """Close the listening sockets; open connections carry on."""
        for server in self._servers:
            server.close()

    async def drain(self, timeout_s: float) -> None:
        """Stop accepting, let tunnels and requests finish for up to `timeout_s`, then close what is left."""
        self.draining = True
        self.stop_accepting()
        for conn in list(self.connections):
            if not self._busy(conn):
                conn.close()
        deadline = time.monotonic() + timeout_s
        while (self.tunnels or self.connections) and time.monotonic() < deadline:
            waiters = [t.done for t in self.tunnels] + [c.task for c in self.connections if c.task is not None]
            if not waiters:
                break
            await asyncio.wait(waiters, timeout=max(0.0, deadline - time.monotonic()),
                               return_when=asyncio.FIRST_COMPLETED)
        for tunnel in list(self.tunnels):
            tunnel.close()
        for conn in list(self.connections):
            conn.close()
        self.pool.close()
        if self._relay is not None:
            # Closing flushes what each side still has pending; give that a moment before the thread stops.
            if closing := [t.done for t in self.tunnels if isinstance(t, NativeTunnel)]:
                await asyncio.wait(closing, timeout=1.0)
            self._relay.close()

    @staticmethod
    def _busy(conn: ClientConn) -> bool:
        return bool(conn.buffer) or conn.busy

    # -- connections ------------------------------------------------------------------------------------
    def connection_opened(self, conn: ClientConn) -> bool:
        """Admit a connection; beyond max_connections (or while draining) answer 503, close it, return False."""
        self.connections.add(conn)
        if len(self.connections) + len(self.tunnels) > self.settings.max_connections or self.draining:
            self.refuse(conn, Overloaded("too many connections"))
            return False
        return True

    def refuse(self, conn: Conn, error: GatewayError) -> None:
        """Answer `error` and close (no request was read)."""
        self._count("-", error.status)
        access_log.info('%s "-" %d %s', self._client_addr(conn), error.status, error)
        conn.write(simple_response(error.status, error_body(error, ""), close=True))
        conn.close()

    def connection_closed(self, conn: ClientConn) -> None:
        """Forget a closed connection."""
        self.connections.discard(conn)

    def _client_addr(self, conn: Conn) -> str:
        assert conn.transport is not None
        peer = conn.transport.get_extra_info("peername")
        return str(peer[0]) if isinstance(peer, tuple) and peer else "unknown"

    async def serve(self, conn: ClientConn) -> None:
        """Answer requests on `conn` until it closes or becomes a tunnel."""
        settings = self.settings
        first = True
        remote = self._client_addr(conn)
        scheme = "https" if self.listen_ssl is not None else "http"
        handed_over = False
        try:
            while not conn.lost:
                conn.busy = False
                if conn.head_ready() or conn.eof or len(conn.buffer) > settings.max_head_bytes:
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
                keep, handed_over = await self.handle(conn, head, remote=remote, scheme=scheme)
                if handed_over or not keep or self.draining:
                    return
        except GatewayError as error:
            # Errors before a route was chosen: bad, slow or oversized heads.
            self._count("-", error.status)
            access_log.info('%s "-" %d %s', remote, error.status, error)
            conn.write(simple_response(error.status, error_body(error, ""), close=True))
        except (ConnectionError, OSError) as exc:
            log.debug("client connection failed: %s", exc)
        except Exception:
            log.exception("unexpected error serving %s", remote)
            conn.write(simple_response(500, error_body(GatewayError("internal error"), ""), close=True))
        finally:
            if not handed_over:
                conn.close()

    def _count(self, route: str, status: int) -> None:
        self.metrics.add("wsgate_requests_total", 1, route=route, status=str(status))

    # -- one request ------------------------------------------------------------------------------------
    async def handle(self, conn: ClientConn, head: RequestHead, *, remote: str, scheme: str) -> tuple[bool, bool]:
        """Answer one request; returns (keep the client connection, it became a tunnel)."""
        started = time.monotonic()
        if head.path == "/actuator" or head.path.startswith("/actuator/"):
            if self.admin is None:
                raise NoRoute("no route")
            if request_framing(head)[0] is not Framing.NONE:
                raise BadRequest("actuator requests take no body")
            status, ctype, body = await self.admin(head)
            conn.write(simple_response(status, body, content_type=ctype, close=not head.keep_alive))
            self._log(remote, head, status, "actuator", "-", started)
            return head.keep_alive, False
        view = RequestView(method=head.method, raw_path=head.path, query=head.query, headers=head.headers,
                           remote_addr=remote, scheme=scheme)
        state = self.state
        match = state.table.match(view)
        if match is None:
            self._count("-", 404)
            body = error_body(NoRoute("no route matches"), head.path)
            # A body we did not read would be taken for the next request: close instead.
            keep = head.keep_alive and request_framing(head)[0] is Framing.NONE
            conn.write(simple_response(404, body, close=not keep))
            self._log(remote, head, 404, "-", "-", started)
            return keep, False
        route = match.route
        try:
            plan = match.plan(view)
            limit_headers: Headers = ()
            for limit in plan.rate_limits:
                decision = await self._rate_decision(route.id, limit, view)
                limit_headers = (*limit_headers, *decision.headers)
                if not decision.allowed:
                    return self._refuse_rate(conn, head, route.id, decision, limit_headers, remote, started), False
            return await self._forward(conn, head, view, route, plan, remote=remote, scheme=scheme,
                                       started=started, extra_headers=limit_headers)
        except GatewayError as error:
            self._count(route.id, error.status)
            self._log(remote, head, error.status, route.id, "-", started)
            conn.write(simple_response(error.status, error_body(error, head.path), close=True))
            return False, False

    async def _rate_decision(self, route_id: str, limit: RateLimit, view: RequestView) -> RateDecision:
        if self.rate_limiter is None:
            # app.py always gives one when a route limits; an embedding without Redis lets requests through.
            return RateDecision(True)
        return await self.rate_limiter.check(route_id, limit, view)

    def _refuse_rate(self, conn: ClientConn, head: RequestHead, route_id: str, decision: RateDecision,
                     headers: Headers, remote: str, started: float) -> bool:
        """Answer a refused rate decision (429, 403 for an empty key, 503 when Redis is down and fail-closed)."""
        self._count(route_id, decision.status)
        self._log(remote, head, decision.status, route_id, "-", started)
        error = GatewayError("rate limit exceeded" if decision.status == 429 else "request refused by rate limiter",
                             status=decision.status)
        keep = head.keep_alive and request_framing(head)[0] is Framing.NONE
        conn.write(simple_response(decision.status, error_body(error, head.path), close=not keep, extra=headers))
        return keep

    def _log(self, remote: str, head: RequestHead, status: int, route: str, instance: str, started: float) -> None:
        if self.settings.access_log:
            access_log.info('%s "%s %s %s" %d route=%s instance=%s %.1fms', remote, head.method, head.target,
                            head.version, status, route, instance, (time.monotonic() - started) * 1000)

    def _endpoints(self, route: RouteSpec) -> tuple[str, tuple[Endpoint, ...]]:
        upstream = route.uri
        if upstream.service is not None:
            return upstream.service, self.provider.snapshot(upstream.service)
        assert upstream.host is not None
        port = upstream.port or (443 if upstream.tls else 80)
        return f"{upstream.host}:{port}", (Endpoint(upstream.host, port),)

    async def _connect(self, route: RouteSpec, view: RequestView, *, pooled: bool) -> tuple[Endpoint, Conn, bool]:
        """Dial the route's instances in balancer order; returns (endpoint, connection, reused from pool)."""
        name, endpoints = self._endpoints(route)
        if not endpoints:
            raise NoInstance(name)
        config = self.state.config
        choice = route.metadata.balancer or config.loadbalancer.choice_for(route.uri.service or "")
        timeout_s = route.metadata.connect_timeout_s or config.server.connect_timeout_s
        tls_context = self.upstream_ssl if route.uri.tls else None
        if route.uri.tls and tls_context is None:
            tls_context = ssl.create_default_context()
        for endpoint in self.balancer.order(name, endpoints, choice, view):
            if pooled:
                idle = self.pool.take(endpoint, tls=route.uri.tls)
                if idle is not None:
                    return endpoint, idle, True
            try:
                return endpoint, await dial(endpoint, timeout_s=timeout_s, ssl_context=tls_context), False
            except (OSError, TimeoutError) as exc:
                reason = "timeout" if isinstance(exc, TimeoutError) else "refused"
                log.warning("dial %s for route %s failed (%s): %s", endpoint.address, route.id, reason, exc)
                self.metrics.add("wsgate_upstream_errors_total", 1, route=route.id, instance=endpoint.address,
                                 reason=reason)
        raise NoInstance(name)

    async def _forward(self, conn: ClientConn, head: RequestHead, view: RequestView, route: RouteSpec,
                       plan: ForwardPlan, *, remote: str, scheme: str, started: float,
                       extra_headers: Headers = ()) -> tuple[bool, bool]:
        upgrade = view.is_websocket and head.method == "GET"
        framing, length = request_framing(head)
        endpoint, upstream, reused = await self._connect(route, view, pooled=not upgrade)
        plan_headers = plan.headers
        if framing is not Framing.NONE and (head.header("expect") or "").lower() == "100-continue":
            # Answer the client's wait ourselves: the body is streamed as soon as it comes.
            conn.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            plan_headers = tuple((k, v) for k, v in plan_headers if k.lower() != "expect")
        headers = upstream_request_headers(
            plan_headers, upgrade=upgrade, client_addr=remote, proto=scheme, prefix=plan.prefix,
            preserve_host=plan.preserve_host,
            upstream_authority=authority(endpoint.host, endpoint.port, "https" if route.uri.tls else "http"))
        request_bytes = serialize_head(f"{head.method} {plan.target} HTTP/1.1", headers)
        response_timeout_s = route.metadata.response_timeout_s or self.settings.response_timeout_s
        try:
            try:
                response = await self._exchange(conn, upstream, request_bytes, framing, length,
                                                response_timeout_s, head.method)
            except BadGateway:
                if not reused or framing is not Framing.NONE:
                    raise
                # A pooled connection the instance closed meanwhile: dial afresh once.
                upstream.close()
                endpoint, upstream, _ = await self._connect(route, view, pooled=False)
                response = await self._exchange(conn, upstream, request_bytes, framing, length,
                                                response_timeout_s, head.method)
        except GatewayError as error:
            upstream.close()
            if isinstance(error, (UpstreamTimeout, BadGateway)):
                self.metrics.add("wsgate_upstream_errors_total", 1, route=route.id, instance=endpoint.address,
                                 reason="timeout" if isinstance(error, UpstreamTimeout) else "bad-response")
            raise
        except BaseException:
            upstream.close()
            raise
        response_headers = (*response.headers, *extra_headers) if extra_headers else response.headers
        if plan.response_headers:
            response_headers = apply_header_ops(response_headers, plan.response_headers)
        self._count(route.id, response.status)
        self._log(remote, head, response.status, route.id, endpoint.address, started)
        if response.status == 101 and upgrade:
            conn.write(serialize_head(f"HTTP/1.1 101 {response.reason}", response_headers))
            self._start_tunnel(conn, upstream, route, endpoint)
            return False, True
        return await self._relay_response(conn, upstream, head, response, response_headers, route, endpoint,
                                          upgrade=upgrade), False

    async def _exchange(self, conn: Conn, upstream: Conn, request_bytes: bytes, framing: Framing, length: int,
                        response_timeout_s: float | None, method: str) -> ResponseHead:
        """Send the head and body upstream and read the final response head (1xx other than 101 relayed)."""
        upstream.write(request_bytes)
        await relay_body(conn, upstream, framing, length, error=BadRequest)
        while True:
            try:
                if response_timeout_s is None:
                    raw = await upstream.read_head(max_bytes=MAX_RESPONSE_HEAD_BYTES)
                else:
                    async with asyncio.timeout(response_timeout_s):
                        raw = await upstream.read_head(max_bytes=MAX_RESPONSE_HEAD_BYTES)
            except TimeoutError:
                raise UpstreamTimeout("instance did not answer in time") from None
            except GatewayError as error:
                raise BadGateway(f"bad response head from instance: {error}") from None
            if raw is None:
                raise BadGateway("instance closed the connection without answering")
            response = parse_response_head(raw)
            if 100 <= response.status < 200 and response.status != 101:
                conn.write(serialize_head(f"HTTP/1.1 {response.status} {response.reason}", response.headers))
                continue
            return response

    async def _relay_response(self, conn: ClientConn, upstream: Conn, head: RequestHead, response: ResponseHead,
                              headers: Headers, route: RouteSpec, endpoint: Endpoint, *, upgrade: bool) -> bool:
        framing, length = response_framing(head.method, response)
        keep_client = head.keep_alive and framing is not Framing.UNTIL_CLOSE
        out = strip_hop_by_hop(headers)
        if not keep_client:
            out = (*out, ("Connection", "close"))
        conn.write(serialize_head(f"HTTP/1.1 {response.status} {response.reason}", out))
        try:
            nbytes = await relay_body(upstream, conn, framing, length, error=BadGateway)
        except GatewayError:
            upstream.close()
            conn.close()
            return False
        self.metrics.add("wsgate_http_bytes_total", nbytes, route=route.id, direction="downstream")
        upstream_keep = (response.version == "HTTP/1.1" and framing is not Framing.UNTIL_CLOSE and not upgrade
                         and "close" not in (response.header("connection") or "").lower())
        if upstream_keep and not upstream.buffer:
            self.pool.put(endpoint, upstream, tls=route.uri.tls)
        else:
            upstream.close()
        await conn.drain()
        return keep_client

    def _native_relay(self, loop: asyncio.AbstractEventLoop | None) -> NativeRelay | None:
        """This worker's relay thread, started on the first tunnel (None: disabled, not built or failed)."""
        if not self.settings.native_relay or loop is None:
            return None
        if self._relay is None and not self._relay_failed and native_relay.available():
            try:
                self._relay = NativeRelay(loop)
            except (OSError, RuntimeError) as exc:
                self._relay_failed = True
                log.warning("native relay unavailable, tunnels are relayed in Python: %s", exc)
        return self._relay

    def _start_tunnel(self, conn: ClientConn, upstream: Conn, route: RouteSpec, endpoint: Endpoint) -> None:
        idle_timeout_s = route.metadata.idle_timeout_s or self.settings.idle_timeout_s
        route_id = route.id
        metrics = self.metrics

        def finished(tunnel: Tunnel | NativeTunnel) -> None:
            self.tunnels.discard(tunnel)
            self.balancer.release(endpoint)
            up, down = tunnel.nbytes
            metrics.add("wsgate_active_tunnels", -1, route=route_id)
            metrics.add("wsgate_tunnel_bytes_total", up, route=route_id, direction="upstream")
            metrics.add("wsgate_tunnel_bytes_total", down, route=route_id, direction="downstream")

        # The client connection now belongs to the tunnel: it no longer counts as a plain connection.
        self.connection_closed(conn)
        self.balancer.acquire(endpoint)
        metrics.add("wsgate_upgrades_total", 1, route=route_id, instance=endpoint.address)
        metrics.add("wsgate_active_tunnels", 1, route=route_id)
        relay = self._native_relay(conn.loop)
        tunnel: Tunnel | NativeTunnel | None = None
        if relay is not None:
            tunnel = relay.adopt(conn, upstream, idle_timeout_s=idle_timeout_s, on_done=finished)
        if tunnel is None:
            tunnel = Tunnel(conn, upstream, idle_timeout_s=idle_timeout_s, on_done=finished, loop=conn.loop)
        if not tunnel.done.done():
            self.tunnels.add(tunnel)
