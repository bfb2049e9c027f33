"""Fixtures for the gateway's proxy-side tests: in-process upstreams and gateways on real sockets."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace

import pytest
from aiohttp import web

from gateway.config.model import GatewayConfig, RouteSpec, ServerSettings, parse_upstream
from gateway.discovery.base import Provider
from gateway.discovery.static import StaticProvider
from gateway.model import RouteMetadata
from gateway.ops.actuator import Actuator
from gateway.ops.metrics import Metrics
from gateway.proxy.server import GatewayServer
from gateway.routing.balancer import Balancer
from gateway.routing.factory import Definition
from gateway.routing.filters import build_filter
from gateway.routing.predicates import build_predicate
from gateway.routing.table import RouteTable
from gateway.routing.targets import RoutingState
from tests.gateway.upstream import make_app


def route(route_id: str, uri: str, predicates: Sequence[str] = (), filters: Sequence[str] = (), *,
          metadata: RouteMetadata | None = None, order: int = 0) -> RouteSpec:
    """A route from SCG shortcut strings."""
    return RouteSpec(id=route_id, uri=parse_upstream(uri), order=order, metadata=metadata or RouteMetadata(),
                     predicates=tuple(build_predicate(Definition.shortcut(p)) for p in predicates),
                     filters=tuple(build_filter(Definition.shortcut(f)) for f in filters))


def config(*routes: RouteSpec, **server: object) -> GatewayConfig:
    """A configuration with `routes` and server settings overridden by keyword."""
    return GatewayConfig(server=ServerSettings(**server), routes=tuple(routes))  # type: ignore[arg-type]


@dataclass
class RunningGateway:
    """An in-process gateway: where it listens and its parts."""

    server: GatewayServer
    port: int
    provider: Provider
    metrics: Metrics
    balancer: Balancer = field(default_factory=Balancer)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"


StartUpstream = Callable[..., Awaitable[int]]
StartGateway = Callable[..., Awaitable[RunningGateway]]


@pytest.fixture
async def start_upstream() -> AsyncIterator[StartUpstream]:
    """Start in-process test backends (tests/gateway/upstream.py); returns each one's port."""
    runners: list[web.AppRunner] = []

    async def start(name: str = "upstream", **kwargs: object) -> int:
        runner = web.AppRunner(make_app(name), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, **kwargs)  # type: ignore[arg-type]
        await site.start()
        runners.append(runner)
        server = site._server
        assert server is not None
        return int(server.sockets[0].getsockname()[1])  # type: ignore[attr-defined]

    yield start
    for runner in runners:
        await runner.cleanup()


@pytest.fixture
async def start_gateway(request: pytest.FixtureRequest) -> AsyncIterator[StartGateway]:
    """Start in-process gateways on 127.0.0.1 with a given config (and provider); drained at the end.

    Where the `http_lane` fixture is in use (tests/gateway/proxy), its lane ("python" or "native") is the one
    `wsgate.native-http` selects for every gateway started.
    """
    started: list[RunningGateway] = []
    lane = request.getfixturevalue("http_lane") if "http_lane" in request.fixturenames else None

    async def start(cfg: GatewayConfig, *, provider: Provider | None = None, **kwargs: object) -> RunningGateway:
        if lane is not None:
            cfg = replace(cfg, server=replace(cfg.server, native_http=lane == "native"))
        provider = provider or StaticProvider()
        metrics = Metrics()
        balancer = Balancer()
        holder: list[GatewayServer] = []
        actuator = Actuator(state=lambda: holder[0].state, provider=provider, metrics=metrics,
                            listen_hosts=lambda: ("127.0.0.1",))
        server = GatewayServer(RoutingState(cfg, RouteTable(cfg)), provider=provider, balancer=balancer,
                               metrics=metrics, admin=actuator, **kwargs)  # type: ignore[arg-type]
        holder.append(server)
        addresses = await server.start("127.0.0.1", 0)
        running = RunningGateway(server, addresses[0][1], provider, metrics, balancer)
        started.append(running)
        return running

    yield start
    for running in started:
        await running.server.drain(0)
