"""Wiring: routes.yaml -> route table, discovery provider, balancer, metrics, actuator and server in one worker.

`GatewayApp.run` serves until SIGTERM/SIGINT, reloading on SIGHUP and (when `watch_file`) when the file's
mtime changes; a bad file on reload is logged and the old routes stay. On stop it drains: no new connections,
tunnels get up to `drain_timeout_s` to finish, then are closed. RequestRateLimiter buckets live in the Redis at
`wsgate.redis.url`, else $REDIS_URL (default 127.0.0.1:6379), keys prefixed with `wsgate.redis.prefix`, else
$WSGATE_REDIS_PREFIX (read once at start: a reload does not move the buckets).

Every long-running background duty of the worker runs under one `TaskSupervisor` (`gateway.ops.tasks`): the metrics
snapshot writer, the routes file watch, each service's discovery watch and the relay's completion reader. One that
fails is logged, restarted with backoff and DOWN in `/actuator/health` until it works again.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import ssl
import sys
from collections.abc import Callable, Mapping

from gateway.config import environment
from gateway.config.loader import load_config
from gateway.config.locator import locator_routes, with_located
from gateway.config.model import ConsulSettings, GatewayConfig, RouteSpec, ServerSettings
from gateway.config.routes import build_any_filter, build_any_predicate
from gateway.discovery.base import Provider
from gateway.discovery.catalog_watch import CatalogWatch, Services
from gateway.discovery.consul import ConsulProvider
from gateway.discovery.static import StaticProvider
from gateway.errors import ConfigError
from gateway.ops.actuator import Actuator
from gateway.ops.admin import AdminPage
from gateway.ops.metrics import Metrics
from gateway.ops.tasks import TaskSupervisor
from gateway.proxy.server import GatewayServer
from gateway.ratelimit.redis import RedisRateLimiter, redis_connection
from gateway.routing.balancer import Balancer
from gateway.routing.table import RouteTable
from gateway.routing.targets import RoutingState

log = logging.getLogger("gateway.app")

FILE_POLL_S = 1.0
METRICS_PUBLISH_S = 1.0
FILE_WATCH = "routes-file-watch"  # the supervised duties of this module
METRICS_SNAPSHOTS = "metrics-snapshots"
CATALOG_WATCH = "discovery-locator-catalog"


def consul_settings(config: GatewayConfig, env: Mapping[str, str]) -> ConsulSettings | None:
    """The file's `discovery.consul`, else $CONSUL_HTTP_ADDR when some route needs discovery."""
    if config.discovery is not None:
        return config.discovery
    address = environment.consul_address(env)
    if address and config.services:
        return ConsulSettings.from_address(address, token=environment.consul_token(env))
    return None


def make_provider(settings: ConsulSettings | None, *, tasks: TaskSupervisor | None = None) -> Provider:
    """A Consul provider for `settings` (its watches duties of `tasks`), or an empty static one without Consul."""
    if settings is None:
        return StaticProvider()
    return ConsulProvider(host=settings.host, port=settings.port, scheme=settings.scheme, token=settings.token,
                          passing_only=settings.passing_only, datacenter=settings.datacenter, tasks=tasks)


def listen_ssl_context(settings: ServerSettings) -> ssl.SSLContext | None:
    """The server-side TLS context for `server.tls-cert-path`/`tls-key-path`, if set."""
    if settings.tls_cert_path is None or settings.tls_key_path is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(settings.tls_cert_path, settings.tls_key_path)
    context.set_alpn_protocols(["http/1.1"])
    return context


def upstream_ssl_context(settings: ServerSettings) -> ssl.SSLContext:
    """The client-side TLS context for https/wss upstreams (verification per settings, optional CA file)."""
    context = ssl.create_default_context(cafile=settings.upstream_ca_path)
    if not settings.upstream_tls_verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


class GatewayApp:
    """One worker process's gateway: load, serve, reload, drain."""

    def __init__(self, config_path: str, *, host: str | None = None, port: int | None = None,
                 env: Mapping[str, str] | None = None, reuse_port: bool = True, watch_file: bool = True) -> None:
        self.config_path = config_path
        self.host = host
        self.port = port
        self.env = dict(environment.current() if env is None else env)
        self.reuse_port = reuse_port
        self.watch_file = watch_file
        self.metrics = Metrics(shared_dir=environment.metrics_dir(self.env))
        self.balancer = Balancer()
        self.metrics.gauge_by("wsgate_instance_tunnels", "instance", self.balancer.active_by_address)
        self.server: GatewayServer | None = None
        self.provider: Provider | None = None
        self.addresses: list[tuple[str, int]] = []
        self.tasks = TaskSupervisor(fault_file=environment.fault_file(self.env))
        self._stop = asyncio.Event()
        self._mtime = self._file_mtime()
        self._services: Services = {}  # the Consul catalog, for discovery.locator's routes
        self._catalog_watching = False

    def _file_mtime(self) -> float | None:
        try:
            return os.stat(self.config_path).st_mtime_ns / 1e9
        except OSError:
            return None

    def _load(self) -> GatewayConfig:
        config = load_config(self.config_path, env=self.env, unknown_filters=environment.unknown_filters(self.env))
        for warning in config.warnings:
            log.warning("%s", warning)
        return config

    def stop(self) -> None:
        """Ask `run` to drain and return."""
        self._stop.set()

    def reload(self) -> bool:
        """Re-read the file; on a bad file log its error and keep the routes in force."""
        assert self.server is not None and self.provider is not None
        try:
            config = self._load()
        except ConfigError as error:
            log.error("reload refused, keeping the previous routes: %s", error)
            return False
        self._install(config)
        log.info("reloaded %s: %d route(s)", self.config_path, len(config.routes))
        return True

    def _install(self, config: GatewayConfig) -> None:
        """Put `config` in force, with discovery.locator's routes for the services known now."""
        assert self.server is not None and self.provider is not None
        self._base = config
        self._follow_catalog(config)
        located: tuple[RouteSpec, ...] = ()
        if config.locator is not None:
            located = locator_routes(config.locator, self._services, build_any_predicate, build_any_filter,
                                     on_error=lambda name, exc: log.warning("discovery.locator: %s: %s", name, exc))
        effective = with_located(config, located)
        self.server.state = RoutingState(effective, RouteTable(effective))
        asyncio.get_running_loop().create_task(self.provider.set_services(effective.services))

    def _follow_catalog(self, config: GatewayConfig) -> None:
        """Start watching Consul's catalog the first time a configuration enables discovery.locator."""
        settings = consul_settings(config, self.env)
        if config.locator is None or settings is None or self._catalog_watching:
            return
        self._catalog_watching = True
        watch = CatalogWatch(settings, self._services_changed)
        self.tasks.spawn(CATALOG_WATCH, watch.run)

    async def _services_changed(self, services: Services) -> None:
        self.tasks.ok(CATALOG_WATCH)  # a unit of work done: UP again after a restart
        self._services = services
        self._install(self._base)
        log.info("discovery.locator: %d service(s) in Consul", len(services))

    async def _watch_file(self) -> None:
        while True:
            await asyncio.sleep(FILE_POLL_S)
            mtime = self._file_mtime()
            if mtime is not None and mtime != self._mtime:
                self._mtime = mtime
                self.reload()
            self.tasks.ok(FILE_WATCH)

    async def _publish_metrics(self) -> None:
        while True:
            await asyncio.sleep(METRICS_PUBLISH_S)
            self.metrics.publish()  # OSError (a full disk, a directory gone) is the supervisor's to report
            self.tasks.ok(METRICS_SNAPSHOTS)

    async def run(self, *, ready: Callable[[GatewayApp], None] | None = None) -> int:
        """Serve until stopped; returns the exit status."""
        config = self._load()
        settings = config.server
        self.provider = make_provider(consul_settings(config, self.env), tasks=self.tasks)
        await self.provider.start(config.services)
        state = RoutingState(config, RouteTable(config))
        actuator = Actuator(state=lambda: self._state(), provider=self.provider, metrics=self.metrics,
                            listen_hosts=lambda: [host for host, _ in self.addresses], tasks=self.tasks)
        admin = AdminPage(state=lambda: self._state(), provider=self.provider, metrics=self.metrics, fallback=actuator,
                          consul=consul_settings(config, self.env), upstream_ssl=upstream_ssl_context(settings),
                          listen_hosts=lambda: [host for host, _ in self.addresses])
        # The Redis client connects on first use: routes without RequestRateLimiter never touch it.
        limiter_redis = redis_connection(environment.wsgate_fallback("redis.url", settings.redis_url, self.env))
        prefix = environment.wsgate_fallback("redis.prefix", settings.redis_prefix, self.env)
        limiter = RedisRateLimiter(limiter_redis.client, key_prefix=prefix)
        self.server = GatewayServer(state, provider=self.provider, balancer=self.balancer, metrics=self.metrics,
                                    admin=admin, upstream_ssl=upstream_ssl_context(settings),
                                    listen_ssl=listen_ssl_context(settings), rate_limiter=limiter)
        self.server.tunnels.tasks = self.tasks  # before `start` starts the relay thread
        self.addresses = await self.server.start(self.host or settings.host, settings.port if self.port is None
                                                 else self.port, reuse_port=self.reuse_port)
        loop = asyncio.get_running_loop()
        for signum, handler in ((signal.SIGTERM, self.stop), (signal.SIGINT, self.stop),
                                (signal.SIGHUP, self.reload)):
            loop.add_signal_handler(signum, handler)
        log.info("gateway listening on %s (pid %d, %d route(s))",
                 ", ".join(f"{h}:{p}" for h, p in self.addresses), os.getpid(), len(config.routes))
        self.tasks.spawn(METRICS_SNAPSHOTS, self._publish_metrics)
        self._base = config
        self._follow_catalog(config)
        mtime = self._file_mtime()
        if mtime is not None and mtime != self._mtime:
            # Changed while this process started, before a SIGHUP could reach the handler (a worker starts with
            # SIGHUP ignored, gateway/ops/supervisor.py): take the file as it is now.
            self._mtime = mtime
            self.reload()
        if self.watch_file:
            self.tasks.spawn(FILE_WATCH, self._watch_file)
        if ready is not None:
            ready(self)
        try:
            await self._stop.wait()
            log.info("draining (up to %.1fs)", self._state().config.server.drain_timeout_s)
            await self.server.drain(self._state().config.server.drain_timeout_s)
        finally:
            self.tasks.cancel(METRICS_SNAPSHOTS)
            self.tasks.cancel(FILE_WATCH)
            self.tasks.cancel(CATALOG_WATCH)
            for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(signum)
            await self.provider.stop()
            await limiter_redis.aclose()
            try:
                self.metrics.publish()
            except OSError as error:
                log.warning("last metrics snapshot not written: %s", error)
        log.info("gateway stopped")
        return 0

    def _state(self) -> RoutingState:
        assert self.server is not None
        return self.server.state


def settle_heap(_app: GatewayApp) -> None:
    """Once a worker listens: what its start made (modules, the routing table, compiled patterns, clients) moves to
    the permanent generation, so the garbage collector's full collections, which a burst of new request heads
    brings on, no longer walk it: each one was a pause of every request of the worker."""
    gc.collect()
    gc.freeze()


def serve_forever(config_path: str, **kwargs: object) -> int:
    """Run one worker on a fresh uvloop loop."""
    import uvloop

    app = GatewayApp(config_path, **kwargs)  # type: ignore[arg-type]
    try:
        with contextlib.suppress(KeyboardInterrupt):
            return int(uvloop.run(app.run(ready=settle_heap)))
    except OSError as error:  # the listen address is taken or not ours: say so, no traceback
        print(f"wsgate: cannot listen: {error}", file=sys.stderr)
        return 1
    return 0
