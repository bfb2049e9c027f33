"""The admin endpoints under /actuator, answered by the gateway itself on its own port.

`GET /actuator/gateway/routes` (SCG's JSON shape), `/actuator/gateway/routes/{id}`, `/actuator/health` (UP or DOWN
with discovery's status and the background duties' (`tasks`); 503 when DOWN, like Spring Boot) and
`/actuator/prometheus`.

Safe by default, as Spring Boot exposes only `health` over HTTP until told otherwise: `health` answers anyone, with
its components (discovery, tasks) only to those who may read management data. Everything else wants
`Authorization: Bearer <wsgate.admin-token>` when a token is set; without one it answers only while the gateway
listens on loopback addresses alone (a developer's machine), and 403 otherwise (`admin_view.decide_access`, the
admin page's rule).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence

from gateway.discovery.base import Provider
from gateway.ops.admin_view import AccessDecision, decide_access
from gateway.ops.metrics import Metrics
from gateway.ops.tasks import TaskSupervisor
from gateway.proxy.httpparse import RequestHead
from gateway.routing.table import describe_routes
from gateway.routing.targets import RoutingState

JSON = "application/json"
PROMETHEUS = "text/plain; version=0.0.4; charset=utf-8"


class Actuator:
    """Answers /actuator requests from the routing state, discovery status and metrics."""

    def __init__(self, *, state: Callable[[], RoutingState], provider: Provider, metrics: Metrics,
                 listen_hosts: Callable[[], Sequence[str]] = lambda: (), tasks: TaskSupervisor | None = None) -> None:
        self._state = state
        self._provider = provider
        self._metrics = metrics
        self._listen_hosts = listen_hosts
        self._tasks = tasks

    def _access(self, head: RequestHead) -> AccessDecision:
        return decide_access(self._state().config.server.admin_token, head.header("authorization"),
                             listen_hosts=list(self._listen_hosts()))

    def health(self, *, details: bool = True) -> tuple[int, dict[str, object]]:
        """(HTTP status, body) of the health endpoint; its components only with `details`."""
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
        body: dict[str, object] = {"status": "UP" if up else "DOWN"}
        if details:
            body["components"] = components
        return (200 if up else 503), body

    async def __call__(self, head: RequestHead) -> tuple[int, str, bytes]:
        """Answer one request: (status, content type, body)."""
        path = head.path.rstrip("/")
        if head.method not in ("GET", "HEAD"):
            return 405, JSON, json.dumps({"status": 405, "error": "Method Not Allowed", "path": path}).encode()
        access = self._access(head)
        if path == "/actuator/health":
            status, body = self.health(details=access.allowed)
            return status, JSON, json.dumps(body).encode()
        if not access.allowed:
            refused = {"status": access.status, "error": "Unauthorized" if access.status == 401 else "Forbidden",
                       "message": access.reason, "path": path}
            return access.status, JSON, json.dumps(refused).encode()
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
