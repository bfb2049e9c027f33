"""The admin endpoints under /actuator, answered by the gateway itself on its own port.

`GET /actuator/gateway/routes` (SCG's JSON shape), `/actuator/gateway/routes/{id}`, `/actuator/health` (UP or DOWN
with discovery's status and the background duties' (`tasks`); 503 when DOWN, like Spring Boot) and
`/actuator/prometheus`. With `server.admin-token`
set every endpoint but health wants `Authorization: Bearer <token>`.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Callable

from gateway.discovery.base import Provider
from gateway.httpparse import RequestHead
from gateway.metrics import Metrics
from gateway.routing import describe_routes
from gateway.targets import RoutingState
from gateway.tasks import TaskSupervisor

JSON = "application/json"
PROMETHEUS = "text/plain; version=0.0.4; charset=utf-8"


class Actuator:
    """Answers /actuator requests from the routing state, discovery status and metrics."""

    def __init__(self, *, state: Callable[[], RoutingState], provider: Provider, metrics: Metrics,
                 tasks: TaskSupervisor | None = None) -> None:
        self._state = state
        self._provider = provider
        self._metrics = metrics
        self._tasks = tasks

    def _authorized(self, head: RequestHead) -> bool:
        token = self._state().config.server.admin_token
        if not token:
            return True
        given = head.header("authorization") or ""
        return hmac.compare_digest(given.encode(), f"Bearer {token}".encode())

    def health(self) -> tuple[int, dict[str, object]]:
        """(HTTP status, body) of the health endpoint."""
        discovery = dict(self._provider.status())
        components: dict[str, object] = {
            "discovery": discovery,
            "gateway": {"status": "UP", "routes": len(self._state().config.routes)},
        }
        up = discovery.get("status") == "UP"
        if self._tasks is not None:
            tasks = dict(self._tasks.status())
            components["tasks"] = tasks
            up = up and tasks.get("status") == "UP"
        return (200 if up else 503), {"status": "UP" if up else "DOWN", "components": components}

    async def __call__(self, head: RequestHead) -> tuple[int, str, bytes]:
        """Answer one request: (status, content type, body)."""
        path = head.path.rstrip("/")
        if head.method not in ("GET", "HEAD"):
            return 405, JSON, json.dumps({"status": 405, "error": "Method Not Allowed", "path": path}).encode()
        if path == "/actuator/health":
            status, body = self.health()
            return status, JSON, json.dumps(body).encode()
        if not self._authorized(head):
            return 401, JSON, json.dumps({"status": 401, "error": "Unauthorized", "path": path}).encode()
        if path == "/actuator/prometheus":
            return 200, PROMETHEUS, self._metrics.render().encode()
        if path == "/actuator/gateway/routes":
            return 200, JSON, json.dumps(describe_routes(self._state().config)).encode()
        if path.startswith("/actuator/gateway/routes/"):
            wanted = path.rsplit("/", 1)[1]
            for route in describe_routes(self._state().config):
                if route.get("route_id") == wanted:
                    return 200, JSON, json.dumps(route).encode()
        if path == "/actuator":
            links = {name: {"href": f"/actuator/{name}"} for name in ("health", "prometheus", "gateway/routes")}
            return 200, JSON, json.dumps({"_links": links}).encode()
        return 404, JSON, json.dumps({"status": 404, "error": "Not Found", "path": path}).encode()
