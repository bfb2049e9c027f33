"""Wiring: the aiohttp application with every resource owned by a cleanup context, and the drain sequence."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import signal
from collections.abc import AsyncIterator
from pathlib import Path

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from wsnode import logsafe
from wsnode.access_log import log_request
from wsnode.api_answers import MAX_BODY_BYTES
from wsnode.auth import BearerKeys, TokenVerifier
from wsnode.endpoint import Endpoint
from wsnode.errors import SettingsError
from wsnode.front import FrontSite
from wsnode.management import Management
from wsnode.node import Node
from wsnode.push_api import PushApi
from wsnode.redis_connect import ClusterClients, ShardClient, cluster_enabled, connect_cluster, connect_shard
from wsnode.registration import ConsulRegistration, ServiceSpec, parse_consul_addr
from wsnode.settings import NodeSettings
from wsnode.shard_agreement import agree_on_shards
from wsnode.sharding import Shards
from wsnode.stream_consumer import StreamConsumer
from wsnode.supervisor import Supervisor
from wsnode.wsconn import LeanHub

log = logging.getLogger("wsnode.app")

NODE_KEY = web.AppKey("node", Node)
REGISTRATION_KEY = web.AppKey("registration", ConsulRegistration)
SUPERVISOR_KEY = web.AppKey("supervisor", Supervisor)
MANAGEMENT_KEY = web.AppKey("management", Management)
ENDPOINT_KEY = web.AppKey("endpoint", Endpoint)
PUSH_API_KEY = web.AppKey("push_api", PushApi)
# The shard-list check (wsnode/shard_agreement.py) is done before listening when every shard answers at once.
SHARD_CHECK_HEAD_START_S = 2.0
LISTEN_BACKLOG = 4096
STATIC_DIR = Path(__file__).resolve().parent / "static"


class AccessLogger(AbstractAccessLogger):
    """Access lines without query strings: client tokens travel in `?token=` and must not reach the logs."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        log_request(self.logger, request.remote, request.method, request.raw_path, response.status, time)


def build_app(settings: NodeSettings, *, is_cluster: bool = False) -> web.Application:
    """The node application (not yet started); `is_cluster` when `--redis` names Redis Cluster nodes."""
    # The connection name lets operators (and tests) tell a node's connections apart in CLIENT LIST.
    name = re.sub(r"[^A-Za-z0-9_.:-]", "_", f"wsnode-{settings.redis_prefix}{settings.node_id}")
    # A bounded pool per shard that makes callers wait for a connection (redis-py's default pool fails with "Too
    # many connections" under a burst of handshakes instead).
    cluster: ClusterClients | None = None
    shard_clients: list[ShardClient] = []
    if is_cluster:
        cluster = connect_cluster(list(settings.redis_urls), max_connections=settings.redis_max_connections,
                                  pool_timeout_s=5.0, socket_connect_timeout=1.0, socket_timeout=5.0,
                                  health_check_interval=10, client_name=name)
        node = Node(settings, cluster=cluster)
    else:
        shard_clients = [connect_shard(url, max_connections=settings.redis_max_connections, pool_timeout_s=5.0,
                                       socket_connect_timeout=1.0, socket_timeout=5.0, health_check_interval=10,
                                       client_name=name)
                         for url in settings.redis_urls]
        node = Node(settings, Shards([shard.client for shard in shard_clients]))
        node.store.use_lanes([shard.lane for shard in shard_clients])
    client = node.redis  # shard 0 (or the cluster) holds the push stream
    verifier = TokenVerifier(hs256_secret=settings.jwt_secret, rs256_public_key=settings.jwt_public_key,
                             leeway_s=settings.token_leeway_s, allow_anonymous=settings.allow_anonymous,
                             allow_no_exp=settings.jwt_allow_no_exp, audience=settings.jwt_audience,
                             issuer=settings.jwt_issuer)
    app = web.Application(client_max_size=MAX_BODY_BYTES)
    app[NODE_KEY] = node
    supervisor = Supervisor()
    app[SUPERVISOR_KEY] = supervisor
    endpoint = Endpoint(node, verifier)
    app[ENDPOINT_KEY] = endpoint
    # Development (anonymous clients, no key configured): the push API and management data need no key.
    open_without_key = settings.allow_anonymous and not settings.api_keys
    api = PushApi(node, BearerKeys(settings.api_keys, open=open_without_key))
    management = Management(node, supervisor, BearerKeys(settings.api_keys + settings.management_keys,
                                                         open=open_without_key))
    app[MANAGEMENT_KEY] = management
    app[PUSH_API_KEY] = api
    ingest = management.ingest  # the RabbitMQ and outbox consumers (brokers_ctx)

    app.router.add_get("/websocket", endpoint.handle)
    app.router.add_get("/health", management.public_health)
    app.router.add_get("/metrics", management.public_metrics)
    app.router.add_routes(api.routes())
    if STATIC_DIR.is_dir():
        app.router.add_static("/static/", STATIC_DIR)

    async def redis_ctx(app: web.Application) -> AsyncIterator[None]:
        yield
        for shard in shard_clients:
            await shard.aclose()
        if cluster is not None:
            await cluster.aclose()

    async def loops_ctx(app: web.Application) -> AsyncIterator[None]:
        consumer = StreamConsumer(client, node.keys.push_stream, consumer=settings.node_id,
                                  push=lambda request, key: node.push(request, source="stream", dedupe_key=key),
                                  claim_idle_s=settings.stream_claim_idle_s)
        supervisor.start("pubsub", node.pubsub_loop)
        supervisor.start("refresh", node.refresh_loop)
        supervisor.start("route-watch", node.route_watch_loop)
        supervisor.start("stream", consumer.run)
        with contextlib.suppress(TimeoutError):
            # A short head start; until the subscription is live, upgrades are refused with 503 anyway.
            await asyncio.wait_for(node.router.subscribed.wait(), 1.0)
        yield
        await supervisor.stop()

    async def brokers_ctx(app: web.Application) -> AsyncIterator[None]:
        if settings.amqp_url:
            from wsnode.amqp_consumer import AmqpConsumer

            amqp = AmqpConsumer(settings.amqp_url, settings.amqp_queue, prefetch=settings.amqp_prefetch,
                                push=lambda request, key: node.push(request, source="amqp", dedupe_key=key))
            ingest.append(amqp.status)
            supervisor.start("amqp", amqp.run)
        if settings.outbox_dsn:
            from wsnode import outbox

            drain = outbox.consumer(settings.outbox_dsn, batch=settings.outbox_batch, poll_s=settings.outbox_poll_s,
                                    push=lambda request, key: node.push(request, source="outbox", dedupe_key=key))
            ingest.append(drain.status)
            supervisor.start("outbox", drain.run)
        yield
        # Before Redis closes: a consumer stopped mid-batch acks and deletes nothing, so nothing is lost.
        await supervisor.cancel("amqp")
        await supervisor.cancel("outbox")

    async def consul_ctx(app: web.Application) -> AsyncIterator[None]:
        if not settings.consul_addr:
            yield
            return
        target = parse_consul_addr(settings.consul_addr)  # validated with the settings
        spec = ServiceSpec(name=settings.service_name, service_id=settings.service_id,
                           address=settings.advertise_host, port=settings.port, node_id=settings.node_id,
                           tags=settings.tags, check_interval_s=settings.consul_check_interval_s,
                           deregister_after_s=settings.consul_deregister_after_s,
                           management_port=settings.management_port)
        registration = ConsulRegistration(target, spec, token=settings.consul_token)
        app[REGISTRATION_KEY] = registration
        supervisor.start("consul", registration.keep_registered)
        yield
        await supervisor.cancel("consul")
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
    logsafe.install([*settings.api_keys, *settings.management_keys, settings.jwt_secret or ""])
    answer = await cluster_enabled(list(settings.redis_urls))
    if answer is None:
        log.warning("no --redis server answered INFO cluster: starting as on standalone servers (a Redis Cluster "
                    "is detected only at start: restart the node once its seeds answer)")
    is_cluster = bool(answer)
    if is_cluster and ("{" in settings.redis_prefix or "}" in settings.redis_prefix):
        # A tag in the prefix would put every key of every user in one slot (one master holds all the data).
        raise SettingsError(f"--redis-prefix {settings.redis_prefix!r}: no '{{' or '}}' on a Redis Cluster (the node "
                         f"tags each user's keys itself, see docs/scaling.md)")
    app = build_app(settings, is_cluster=is_cluster)
    node = app[NODE_KEY]
    # A cluster is one data set to the node (there is no client-side shard list to agree on).
    shard_check = asyncio.create_task(agree_on_shards(node.shards.all, settings.redis_urls, node.keys)
                                      if not is_cluster else asyncio.sleep(0))
    if is_cluster:
        log.info("redis: a Redis Cluster (seeds %s)", ", ".join(settings.redis_urls))
    # A node whose --redis list differs from the other nodes' refuses to start (exit 2, the difference named). A
    # shard that does not answer yet is checked in the background: the node serves the users of the others.
    await asyncio.wait({shard_check}, timeout=SHARD_CHECK_HEAD_START_S)
    if shard_check.done():
        shard_check.result()
    runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=5.0, access_log_class=AccessLogger)
    await runner.setup()
    # When a node dies its clients all reconnect to the others at once: aiohttp's default backlog of 128 overflowed
    # (25k listen overflows in a 10,000-client storm, `python -m bench.storm`), and each overflow costs the client a
    # SYN retransmission of 1 s or more. The kernel caps it at net.core.somaxconn.
    site: web.TCPSite
    if settings.ws_compress:  # permessage-deflate: aiohttp's WebSocket only
        site = web.TCPSite(runner, settings.host, settings.port, reuse_address=True, backlog=LISTEN_BACKLOG)
    else:  # upgrades to /websocket and pushes take the lean paths (wsnode/front.py), everything else aiohttp's
        site = FrontSite(runner, settings.host, settings.port, hub=LeanHub(app[ENDPOINT_KEY]), api=app[PUSH_API_KEY],
                         backlog=LISTEN_BACKLOG, head_timeout_s=settings.head_timeout_s)
    await site.start()
    management_runner: web.AppRunner | None = None
    if settings.management_port is not None:
        management_runner = web.AppRunner(app[MANAGEMENT_KEY].app(), handle_signals=False,
                                          access_log_class=AccessLogger)
        await management_runner.setup()
        await web.TCPSite(management_runner, settings.management_host or settings.host, settings.management_port,
                          reuse_address=True).start()
    log.info("wsnode %s listening on %s:%d", settings.node_id, settings.host, settings.port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    if started is not None:
        started.set()
    stopped = asyncio.create_task(stop.wait())
    await asyncio.wait({stopped, shard_check}, return_when=asyncio.FIRST_COMPLETED)
    mismatch = shard_check.exception() if shard_check.done() else None
    if mismatch is not None:
        log.error("stopping: %s", mismatch)
    elif not stopped.done():
        await stopped
    stopped.cancel()
    shard_check.cancel()
    log.info("draining")
    node.draining = True
    registration = app.get(REGISTRATION_KEY)
    if registration is not None:
        await app[SUPERVISOR_KEY].cancel("consul")  # it would register the node again
        await registration.deregister()
        # Give gateways watching Consul a moment to stop routing here before clients reconnect.
        await asyncio.sleep(settings.drain_delay_s)
    await runner.cleanup()
    if management_runner is not None:
        await management_runner.cleanup()
    log.info("stopped")
    if mismatch is not None:
        raise mismatch
