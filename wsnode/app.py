"""Wiring: the aiohttp application with every resource owned by a cleanup context, and the drain sequence."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import redis.asyncio as aioredis
from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from wsnode import metrics
from wsnode.auth import TokenVerifier
from wsnode.endpoint import Endpoint
from wsnode.ingest import IngestStatus
from wsnode.node import Node
from wsnode.push_api import PushApi
from wsnode.registration import ConsulRegistration, ServiceSpec, parse_consul_addr
from wsnode.settings import NodeSettings
from wsnode.sharding import Shards
from wsnode.stream_consumer import StreamConsumer

log = logging.getLogger("wsnode.app")

NODE_KEY = web.AppKey("node", Node)
REGISTRATION_KEY = web.AppKey("registration", ConsulRegistration)
STATIC_DIR = Path(__file__).resolve().parent / "static"


def _background(task_name: str, coro: object) -> asyncio.Task[None]:
    return asyncio.get_running_loop().create_task(coro, name=task_name)  # type: ignore[arg-type]


async def _cancel(*tasks: asyncio.Task[None]) -> None:
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task


class AccessLogger(AbstractAccessLogger):
    """Access lines without query strings: client tokens travel in `?token=` and must not reach the logs."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        self.logger.info("%s %s %s %d %.1fms", request.remote, request.method, request.path, response.status,
                         time * 1000)


def build_app(settings: NodeSettings) -> web.Application:
    """The node application (not yet started)."""
    # The connection name lets operators (and tests) tell a node's connections apart in CLIENT LIST.
    name = re.sub(r"[^A-Za-z0-9_.:-]", "_", f"wsnode-{settings.redis_prefix}{settings.node_id}")
    # A bounded pool per shard that makes callers wait for a connection (redis-py's default pool fails with "Too
    # many connections" under a burst of handshakes instead).
    pools = [aioredis.BlockingConnectionPool.from_url(
        url, max_connections=settings.redis_max_connections, timeout=5.0,
        socket_connect_timeout=1.0, socket_timeout=5.0, health_check_interval=10, client_name=name)
        for url in settings.redis_urls]
    shards = Shards([aioredis.Redis(connection_pool=pool) for pool in pools])
    client = shards.primary  # shard 0 holds the push stream
    node = Node(settings, shards)
    verifier = TokenVerifier(hs256_secret=settings.jwt_secret, rs256_public_key=settings.jwt_public_key,
                             leeway_s=settings.token_leeway_s, allow_anonymous=settings.allow_anonymous)
    app = web.Application(client_max_size=1024 * 1024)
    app[NODE_KEY] = node
    endpoint = Endpoint(node, verifier)
    api = PushApi(node, settings.api_keys, open_without_key=settings.allow_anonymous)

    ingest: list[IngestStatus] = []  # the RabbitMQ and outbox consumers (brokers_ctx)

    async def health(request: web.Request) -> web.Response:
        up, details = await node.healthy()
        # Shown, but not part of UP: a broker outage must not take the node's WebSockets out of Consul.
        details.update({status.source: status.as_json() for status in ingest})
        return web.json_response(details, status=200 if up else 503)

    async def prometheus(request: web.Request) -> web.Response:
        return web.Response(body=metrics.render(), content_type="text/plain", charset="utf-8",
                            headers={"X-Prometheus-Format": "0.0.4"})

    app.router.add_get("/websocket", endpoint.handle)
    app.router.add_get("/health", health)
    app.router.add_get("/metrics", prometheus)
    app.router.add_routes(api.routes())
    if STATIC_DIR.is_dir():
        app.router.add_static("/static/", STATIC_DIR)

    async def redis_ctx(app: web.Application) -> AsyncIterator[None]:
        yield
        for shard_client, pool in zip(shards.all, pools, strict=True):
            await shard_client.aclose()
            await pool.disconnect()

    async def loops_ctx(app: web.Application) -> AsyncIterator[None]:
        consumer = StreamConsumer(client, node.keys.push_stream, consumer=settings.node_id,
                                  push=lambda request, key: node.push(request, source="stream", dedupe_key=key),
                                  claim_idle_s=settings.stream_claim_idle_s)
        tasks = [_background("pubsub", node.router.run(node.handle_payload, node.resync)),
                 _background("refresh", node.refresh_loop()),
                 _background("stream", consumer.run())]
        with contextlib.suppress(TimeoutError):
            # A short head start; until the subscription is live, upgrades are refused with 503 anyway.
            await asyncio.wait_for(node.router.subscribed.wait(), 1.0)
        yield
        await _cancel(*tasks)

    async def brokers_ctx(app: web.Application) -> AsyncIterator[None]:
        tasks = []
        if settings.amqp_url:
            from wsnode.amqp_consumer import AmqpConsumer

            amqp = AmqpConsumer(settings.amqp_url, settings.amqp_queue, prefetch=settings.amqp_prefetch,
                                push=lambda request, key: node.push(request, source="amqp", dedupe_key=key))
            ingest.append(amqp.status)
            tasks.append(_background("amqp", amqp.run()))
        if settings.outbox_dsn:
            from wsnode import outbox

            drain = outbox.consumer(settings.outbox_dsn, batch=settings.outbox_batch, poll_s=settings.outbox_poll_s,
                                    push=lambda request, key: node.push(request, source="outbox", dedupe_key=key))
            ingest.append(drain.status)
            tasks.append(_background("outbox", drain.run()))
        yield
        await _cancel(*tasks)

    async def consul_ctx(app: web.Application) -> AsyncIterator[None]:
        if not settings.consul_addr:
            yield
            return
        target = parse_consul_addr(settings.consul_addr)  # validated with the settings
        spec = ServiceSpec(name=settings.service_name, service_id=settings.service_id,
                           address=settings.advertise_host, port=settings.port, node_id=settings.node_id,
                           tags=settings.tags, check_interval_s=settings.consul_check_interval_s,
                           deregister_after_s=settings.consul_deregister_after_s)
        registration = ConsulRegistration(target, spec, token=settings.consul_token)
        app[REGISTRATION_KEY] = registration
        task = _background("consul", registration.keep_registered())
        yield
        await _cancel(task)
        if registration.registered:
            await registration.deregister()
        await registration.close()

    async def on_shutdown(app: web.Application) -> None:
        await node.close_all()

    app.cleanup_ctx.extend([redis_ctx, loops_ctx, brokers_ctx, consul_ctx])
    app.on_shutdown.append(on_shutdown)
    return app


async def serve(settings: NodeSettings, *, started: asyncio.Event | None = None) -> None:
    """Run until SIGTERM/SIGINT, then drain: leave Consul, stop accepting, close sessions 1001, clean Redis."""
    app = build_app(settings)
    runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=5.0, access_log_class=AccessLogger)
    await runner.setup()
    site = web.TCPSite(runner, settings.host, settings.port, reuse_address=True)
    await site.start()
    log.info("wsnode %s listening on %s:%d", settings.node_id, settings.host, settings.port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    if started is not None:
        started.set()
    await stop.wait()
    log.info("draining")
    node = app[NODE_KEY]
    node.draining = True
    registration = app.get(REGISTRATION_KEY)
    if registration is not None:
        await registration.deregister()
        # Give gateways watching Consul a moment to stop routing here before clients reconnect.
        await asyncio.sleep(settings.drain_delay_s)
    await runner.cleanup()
    log.info("stopped")
