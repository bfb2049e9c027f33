"""/health and /metrics of a node, on the public port (details with a key) and on the management port."""

from __future__ import annotations

from aiohttp import web

from wsnode import metrics
from wsnode.auth import BearerKeys
from wsnode.ingest import IngestStatus
from wsnode.node import Node
from wsnode.supervisor import Supervisor


class Management:
    """/health and /metrics. Consul's check (and anyone) gets the status code and UP/DOWN; the details and the
    metrics need a key, or come from the management port, which should be reachable only from the private network
    (through the gateway's routes only the public port is reachable)."""

    def __init__(self, node: Node, supervisor: Supervisor, keys: BearerKeys) -> None:
        self.node = node
        self.supervisor = supervisor
        self.keys = keys
        self.ingest: list[IngestStatus] = []  # the RabbitMQ and outbox consumers, when configured

    async def details(self) -> tuple[bool, dict[str, object]]:
        """(UP?, the detailed health): Redis, pub/sub, every supervised task, and the broker/outbox consumers."""
        up, details = await self.node.healthy()
        if self.supervisor.down:
            up = False
            details["status"] = "DOWN"
        details["tasks"] = self.supervisor.status()
        # Shown, but not part of UP: a broker outage must not take the node's WebSockets out of Consul.
        details.update({status.source: status.as_json() for status in self.ingest})
        return up, details

    async def public_health(self, request: web.Request) -> web.Response:
        """GET /health on the public port: details only with a key."""
        up, details = await self.details()
        if not self.keys.admits(request.headers.get("Authorization")):
            details = {"status": details["status"]}
        return web.json_response(details, status=200 if up else 503)

    async def public_metrics(self, request: web.Request) -> web.Response:
        """GET /metrics on the public port: with a key only."""
        if not self.keys.admits(request.headers.get("Authorization")):
            return web.json_response({"status": 401, "error": "metrics need an API or management key"}, status=401,
                                     headers={"WWW-Authenticate": 'Bearer realm="wsnode"'})
        return await self.metrics(request)

    async def health(self, request: web.Request) -> web.Response:
        """GET /health on the management port: the details."""
        up, details = await self.details()
        return web.json_response(details, status=200 if up else 503)

    async def metrics(self, request: web.Request) -> web.Response:
        """GET /metrics on the management port: Prometheus text."""
        return web.Response(body=metrics.render(), content_type="text/plain", charset="utf-8",
                            headers={"X-Prometheus-Format": "0.0.4"})

    def app(self) -> web.Application:
        """The management port's application."""
        app = web.Application()
        app.router.add_get("/health", self.health)
        app.router.add_get("/metrics", self.metrics)
        return app
