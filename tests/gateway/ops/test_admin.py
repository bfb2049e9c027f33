"""The admin page: who may read its data, the pure pieces of its document, and the document from real sockets
(fake nodes serving /health and /metrics, a node that does not answer, the dev Consul agent for statuses)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from gateway.config.model import ConsulSettings, GatewayConfig
from gateway.discovery.base import Endpoint
from gateway.discovery.static import StaticProvider
from gateway.ops.actuator import Actuator
from gateway.ops.admin import AdminPage
from gateway.ops.admin_view import (
    NodeSample,
    consul_instances,
    decide_access,
    instance_tunnels,
    loopback_only,
    node_sample,
    parse_prometheus,
    rates_per_s,
)
from gateway.ops.metrics import Metrics
from gateway.proxy.server import GatewayServer
from gateway.routing.balancer import Balancer
from gateway.routing.table import RouteTable
from gateway.routing.targets import RoutingState
from harness import free_port
from tests.gateway.conftest import config, route
from tests.gateway.procs import eventually, register

TOKEN = "s3cret-admin"
ROUTE = route("ws-svc", "lb:ws://ws-service", ["Path=/ws-svc/**"], ["StripPrefix=1"])

# ---- pure pieces ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("token", "authorization", "hosts", "status"), [
    (TOKEN, f"Bearer {TOKEN}", ["0.0.0.0"], 200),
    (TOKEN, f"bearer  {TOKEN}", ["0.0.0.0"], 200),
    (TOKEN, None, ["127.0.0.1"], 401),
    (TOKEN, "Bearer nope", ["0.0.0.0"], 401),
    (TOKEN, TOKEN, ["0.0.0.0"], 401),
    (TOKEN, f"Basic {TOKEN}", ["0.0.0.0"], 401),
    (None, None, ["0.0.0.0"], 403),
    (None, "Bearer anything", ["127.0.0.1", "10.0.0.5"], 403),
    (None, None, [], 403),
    (None, None, ["127.0.0.1", "::1"], 200),
    (None, None, ["localhost"], 200),
])
def test_admin_access_wants_the_token_or_a_loopback_only_listener(
        token: str | None, authorization: str | None, hosts: list[str], status: int) -> None:
    decision = decide_access(token, authorization, listen_hosts=hosts)
    assert decision.status == status
    assert decision.allowed is (status == 200)
    if status == 403:
        assert "admin-token" in decision.reason


@pytest.mark.parametrize(("hosts", "expected"), [
    (["127.0.0.1"], True), (["127.0.0.2", "::1"], True), (["[::1]"], True), (["::"], False),
    (["0.0.0.0"], False), (["192.168.1.2"], False), (["example.org"], False), ([], False),
])
def test_admin_loopback_only_needs_every_address_loopback(hosts: list[str], expected: bool) -> None:
    assert loopback_only(hosts) is expected


def test_admin_parse_prometheus_sums_series_and_skips_junk() -> None:
    text = """# HELP wsnode_sessions open
# TYPE wsnode_sessions gauge
wsnode_sessions 3.0
wsnode_messages_in_total{type="ack"} 4.0
wsnode_messages_in_total{type="pi}ng"} 1.0
wsnode_messages_out_total 1e3 1700000000
broken_line
nan_value NaN
not_a_number{a="b"} x
"""
    assert parse_prometheus(text) == {"wsnode_sessions": 3.0, "wsnode_messages_in_total": 5.0,
                                      "wsnode_messages_out_total": 1000.0}


@pytest.mark.parametrize(("before", "after", "elapsed_s", "expected"), [
    (None, {"messages_out": 10.0}, 1.0, {}),
    ({"messages_out": 10.0}, {"messages_out": 30.0}, 2.0, {"messages_out": 10.0}),
    ({"messages_out": 10.0}, {"messages_out": 4.0}, 1.0, {"messages_out": 4.0}),  # restarted node
    ({}, {"messages_out": 4.0}, 1.0, {}),
    ({"messages_out": 1.0}, {"messages_out": 2.0}, 0.0, {}),
])
def test_admin_rates_per_second_between_samples(before: dict[str, float] | None, after: dict[str, float],
                                                elapsed_s: float, expected: dict[str, float]) -> None:
    previous = None if before is None else NodeSample(taken_at_s=100.0, counters=before)
    assert rates_per_s(previous, NodeSample(taken_at_s=100.0 + elapsed_s, counters=after)) == expected


@pytest.mark.parametrize(("health", "metrics", "node", "sessions", "counters"), [
    ({"status": "UP", "node": "n1", "sessions": 2}, "wsnode_sessions 5\nwsnode_pushes_total{source=\"http\"} 3",
     "n1", 2, {"pushes": 3.0}),
    (None, "wsnode_sessions 5\n", None, 5, {}),
    ("not a mapping", None, None, None, {}),
    ({"sessions": True}, None, None, None, {}),
])
def test_admin_node_sample_reads_health_then_metrics(health: object, metrics: str | None, node: str | None,
                                                     sessions: int | None, counters: dict[str, float]) -> None:
    sample = node_sample(1.0, health, metrics)
    assert (sample.node, sample.sessions, dict(sample.counters)) == (node, sessions, counters)


def _entry(service_id: str, port: object, statuses: Sequence[str], address: str = "127.0.0.1") -> dict[str, Any]:
    return {"Node": {"Address": "10.0.0.1"}, "Service": {"ID": service_id, "Address": address, "Port": port,
                                                          "Meta": {"node_id": f"node-{service_id}"}},
            "Checks": [{"Name": f"c{n}", "Status": s} for n, s in enumerate(statuses)]}


def test_admin_consul_instances_keep_every_status_and_skip_malformed() -> None:
    entries = [_entry("b", 9002, ["passing", "critical"]), _entry("a", 9001, ["passing"]),
               _entry("w", 9003, ["warning"], address=""), _entry("bad", "80", []), _entry("zero", 0, []),
               {"Service": "nope"}, "junk"]
    found = consul_instances(entries)
    assert [(i.instance_id, i.address, i.status, i.node_id) for i in found] == [
        ("w", "10.0.0.1:9003", "warning", "node-w"),
        ("a", "127.0.0.1:9001", "passing", "node-a"),
        ("b", "127.0.0.1:9002", "critical", "node-b"),
    ]
    assert found[2].checks == (("c0", "passing"), ("c1", "critical"))
    assert consul_instances({"not": "a list"}) == []


def test_admin_instance_tunnels_from_aggregated_totals() -> None:
    totals = {
        ("wsgate_instance_tunnels", (("instance", "h:1"),)): 2.0,
        ("wsgate_upgrades_total", (("instance", "h:1"), ("route", "a"))): 5.0,
        ("wsgate_upgrades_total", (("instance", "h:1"), ("route", "b"))): 1.0,
        ("wsgate_active_tunnels", (("route", "a"),)): 2.0,
    }
    assert instance_tunnels(totals) == ({"h:1": 2}, {"h:1": 6})


def test_admin_metrics_gauge_by_label_is_rendered_and_summed_over_workers(tmp_path: Path) -> None:
    balancer = Balancer()
    metrics = Metrics(shared_dir=str(tmp_path))
    metrics.gauge_by("wsgate_instance_tunnels", "instance", balancer.active_by_address)
    balancer.acquire(Endpoint("127.0.0.1", 9001))
    (tmp_path / "1.json").write_text(json.dumps([["wsgate_instance_tunnels", [["instance", "127.0.0.1:9001"]], 2]]))
    assert 'wsgate_instance_tunnels{instance="127.0.0.1:9001"} 3' in metrics.render()
    balancer.release(Endpoint("127.0.0.1", 9001))
    assert metrics.totals()[("wsgate_instance_tunnels", (("instance", "127.0.0.1:9001"),))] == 2


# ---- real sockets --------------------------------------------------------------------------------------------


@dataclass
class FakeNode:
    """A node's read-only surface: /health and /metrics (as wsnode answers them) and an echoing /websocket."""

    name: str
    sessions: int = 0
    messages_out: int = 0
    port: int = 0
    runner: web.AppRunner | None = field(default=None, repr=False)

    async def health(self, _: web.Request) -> web.Response:
        return web.json_response({"status": "UP", "node": self.name, "redis": "UP", "pubsub": "UP",
                                  "sessions": self.sessions, "draining": False})

    async def metrics(self, _: web.Request) -> web.Response:
        text = (f"# TYPE wsnode_sessions gauge\nwsnode_sessions {float(self.sessions)}\n"
                f"wsnode_messages_out_total {float(self.messages_out)}\n"
                'wsnode_messages_in_total{type="ack"} 0.0\n')
        return web.Response(text=text, content_type="text/plain")

    async def websocket(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for msg in ws:
            await ws.send_str(msg.data)
        return ws

    @property
    def endpoint(self) -> Endpoint:
        return Endpoint("127.0.0.1", self.port, instance_id=f"ws-service-{self.name}", meta=(("node_id", self.name),))


@dataclass
class AdminGateway:
    """An in-process gateway whose /actuator is the admin page in front of the actuator."""

    server: GatewayServer
    admin: AdminPage
    port: int
    provider: StaticProvider
    metrics: Metrics
    balancer: Balancer

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    async def get(self, path: str, token: str | None = TOKEN) -> tuple[int, str, Any]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        async with aiohttp.ClientSession() as http, http.get(self.url + path, headers=headers) as response:
            body = await response.read()
            ctype = response.headers.get("Content-Type", "")
            return response.status, ctype, json.loads(body) if ctype.startswith("application/json") else body


StartNode = Callable[[str], Awaitable[FakeNode]]
StartAdmin = Callable[..., Awaitable[AdminGateway]]


@pytest.fixture
async def start_node() -> AsyncIterator[StartNode]:
    """Start fake nodes on free ports."""
    nodes: list[FakeNode] = []

    async def start(name: str) -> FakeNode:
        node = FakeNode(name)
        app = web.Application()
        app.router.add_get("/health", node.health)
        app.router.add_get("/metrics", node.metrics)
        app.router.add_get("/websocket", node.websocket)
        node.runner = web.AppRunner(app, access_log=None)
        await node.runner.setup()
        site = web.TCPSite(node.runner, "127.0.0.1", 0)
        await site.start()
        assert site._server is not None
        node.port = int(site._server.sockets[0].getsockname()[1])  # type: ignore[attr-defined]
        nodes.append(node)
        return node

    yield start
    for node in nodes:
        assert node.runner is not None
        await node.runner.cleanup()


@pytest.fixture
async def start_admin() -> AsyncIterator[StartAdmin]:
    """Start an in-process gateway with the admin page (cache off so that each request polls the nodes)."""
    started: list[GatewayServer] = []

    async def start(cfg: GatewayConfig, provider: StaticProvider, *, consul: ConsulSettings | None = None,
                    listen_hosts: Sequence[str] = ("127.0.0.1",), metrics_dir: str | None = None) -> AdminGateway:
        metrics = Metrics(shared_dir=metrics_dir)
        balancer = Balancer()
        metrics.gauge_by("wsgate_instance_tunnels", "instance", balancer.active_by_address)
        holder: list[GatewayServer] = []
        actuator = Actuator(state=lambda: holder[0].state, provider=provider, metrics=metrics,
                            listen_hosts=lambda: listen_hosts)
        admin = AdminPage(state=lambda: holder[0].state, provider=provider, metrics=metrics, fallback=actuator,
                          consul=consul, listen_hosts=lambda: listen_hosts, node_timeout_s=0.5, cache_s=0.0)
        server = GatewayServer(RoutingState(cfg, RouteTable(cfg)), provider=provider, balancer=balancer,
                               metrics=metrics, admin=admin)
        holder.append(server)
        started.append(server)
        addresses = await server.start("127.0.0.1", 0)
        return AdminGateway(server, admin, addresses[0][1], provider, metrics, balancer)

    yield start
    for server in started:
        await server.drain(0)


async def test_admin_data_wants_the_admin_token(start_admin: StartAdmin) -> None:
    gw = await start_admin(config(ROUTE, admin_token=TOKEN), StaticProvider())
    assert (await gw.get("/actuator/admin/data", token=None))[0] == 401
    status, _, body = await gw.get("/actuator/admin/data", token="wrong")
    assert (status, body["error"]) == (401, "missing or wrong admin token (Authorization: Bearer <token>)")
    assert (await gw.get("/actuator/admin/data"))[0] == 200


async def test_admin_data_refused_without_configured_token_unless_loopback_only(start_admin: StartAdmin) -> None:
    exposed = await start_admin(config(ROUTE), StaticProvider(), listen_hosts=("0.0.0.0",))
    status, _, body = await exposed.get("/actuator/admin/data", token=None)
    assert status == 403 and "wsgate: {admin-token: <secret>}" in body["error"]
    local = await start_admin(config(ROUTE), StaticProvider(), listen_hosts=("127.0.0.1", "::1"))
    assert (await local.get("/actuator/admin/data", token=None))[0] == 200


async def test_management_data_refused_on_an_exposed_gateway_without_token(start_admin: StartAdmin) -> None:
    exposed = await start_admin(config(ROUTE), StaticProvider(), listen_hosts=("0.0.0.0",))
    for path in ("/actuator/prometheus", "/actuator/gateway/routes", "/actuator/gateway/routes/r", "/actuator"):
        status, _, body = await exposed.get(path, token=None)
        assert status == 403 and "wsgate: {admin-token: <secret>}" in body["message"], path
    status, _, body = await exposed.get("/actuator/health", token=None)
    assert (status, body) == (200, {"status": "UP"})  # no details (Spring Boot's show-details when-authorized)
    local = await start_admin(config(ROUTE), StaticProvider(), listen_hosts=("127.0.0.1",))
    assert (await local.get("/actuator/prometheus", token=None))[0] == 200
    status, _, body = await local.get("/actuator/health", token=None)
    assert status == 200 and body["components"]["gateway"]["routes"] == 1


async def test_management_data_with_admin_token_wants_it_even_on_loopback(start_admin: StartAdmin) -> None:
    gw = await start_admin(config(ROUTE, admin_token=TOKEN), StaticProvider(), listen_hosts=("127.0.0.1",))
    assert (await gw.get("/actuator/prometheus", token=None))[0] == 401
    assert "components" not in (await gw.get("/actuator/health", token=None))[2]
    assert (await gw.get("/actuator/prometheus"))[0] == 200
    assert "components" in (await gw.get("/actuator/health"))[2]


async def test_admin_page_and_assets_load_without_token_and_other_paths_reach_the_actuator(
        start_admin: StartAdmin) -> None:
    gw = await start_admin(config(ROUTE, admin_token=TOKEN), StaticProvider())
    status, ctype, page = await gw.get("/actuator/admin", token=None)
    assert (status, ctype) == (200, "text/html; charset=utf-8") and b"/actuator/admin/admin.js" in page
    assert (await gw.get("/actuator/admin/", token=None))[0] == 200
    status, ctype, script = await gw.get("/actuator/admin/admin.js", token=None)
    assert (status, ctype) == (200, "text/javascript; charset=utf-8") and b"sessionStorage" in script
    assert (await gw.get("/actuator/admin/admin.css", token=None))[1] == "text/css; charset=utf-8"
    for path in ("/actuator/admin/..%2Fapp.py", "/actuator/admin/admin.html.bak", "/actuator/admin/static/admin.js"):
        assert (await gw.get(path, token=None))[0] == 404, path
    assert (await gw.get("/actuator/health", token=None))[0] == 200
    assert (await gw.get("/actuator/gateway/routes", token=None))[0] == 401
    async with aiohttp.ClientSession() as http, http.post(gw.url + "/actuator/admin/data") as response:
        assert response.status == 405


async def test_admin_data_lists_routes_instances_and_node_figures(start_admin: StartAdmin,
                                                                  start_node: StartNode) -> None:
    node_a, node_b = await start_node("node-a"), await start_node("node-b")
    dead = Endpoint("127.0.0.1", free_port(), instance_id="ws-service-dead")
    provider = StaticProvider({"ws-service": (node_a.endpoint, node_b.endpoint, dead)})
    gw = await start_admin(config(ROUTE, admin_token=TOKEN), provider)
    node_a.sessions, node_a.messages_out = 2, 100
    first = (await gw.get("/actuator/admin/data"))[2]
    assert [r["route_id"] for r in first["routes"]] == ["ws-svc"]
    assert first["routes"][0]["uri"] == "lb:ws://ws-service"
    [service] = first["services"]
    assert (service["name"], service["source"], service["error"]) == ("ws-service", "static", None)
    by_node = {i["node_id"] or i["id"]: i for i in service["instances"]}
    assert set(by_node) == {"node-a", "node-b", "ws-service-dead"}
    a = by_node["node-a"]
    assert (a["address"], a["status"], a["in_pool"], a["active_tunnels"]) == (node_a.endpoint.address, "static",
                                                                               True, 0)
    assert a["stats"] == {"reachable": True, "error": None, "node": "node-a", "health": "UP", "draining": False,
                          "sessions": 2, "rates": {}}
    gone = by_node["ws-service-dead"]["stats"]
    assert gone["reachable"] is False and gone["sessions"] is None and gone["error"].startswith("no answer")
    assert first["cluster"]["sessions"] == 2 and first["cluster"]["nodes_answering"] == 2
    assert set(first["gateway"]) >= {"open_connections", "active_tunnels", "upgrades", "requests", "discovery"}
    # The second poll has a previous sample: counters become per-second rates.
    node_a.messages_out = 150
    node_b.sessions = 1
    second = (await gw.get("/actuator/admin/data"))[2]
    stats = {i["address"]: i["stats"] for i in second["services"][0]["instances"]}
    assert stats[node_a.endpoint.address]["rates"]["messages_out"] > 0
    assert stats[node_b.endpoint.address]["sessions"] == 1
    assert second["cluster"]["sessions"] == 3 and second["cluster"]["rates"]["messages_out"] > 0


async def test_admin_data_counts_active_tunnels_per_instance_over_workers(
        start_admin: StartAdmin, start_node: StartNode, tmp_path: Path) -> None:
    node_a = await start_node("node-a")
    provider = StaticProvider({"ws-service": (node_a.endpoint,)})
    # Another worker's published snapshot: one more tunnel to node-a.
    (tmp_path / "1.json").write_text(json.dumps(
        [["wsgate_instance_tunnels", [["instance", node_a.endpoint.address]], 1]]))
    gw = await start_admin(config(ROUTE, admin_token=TOKEN), provider, metrics_dir=str(tmp_path))
    async with aiohttp.ClientSession() as http, http.ws_connect(f"{gw.ws_url}/ws-svc/websocket") as ws:
        await ws.send_str("hello")
        assert (await ws.receive_str()) == "hello"
        data = (await gw.get("/actuator/admin/data"))[2]
        [instance] = data["services"][0]["instances"]
        assert (instance["active_tunnels"], instance["upgrades"]) == (2, 1)
        assert data["gateway"]["active_tunnels"] == 1
    # Once the client has gone the gateway releases the tunnel: only the other worker's remains.
    assert await eventually(lambda: gw.balancer.active_by_address() == {})
    assert (await gw.get("/actuator/admin/data"))[2]["services"][0]["instances"][0]["active_tunnels"] == 1


async def test_admin_data_shows_consul_status_of_every_instance(start_admin: StartAdmin, start_node: StartNode,
                                                                consul_addr: str) -> None:
    node_a = await start_node("node-a")
    await register(consul_addr, "ok", node_a.port)
    await register(consul_addr, "sick", free_port(), status="critical")
    provider = StaticProvider({"ws-service": (Endpoint("127.0.0.1", node_a.port, instance_id="ok"),)})
    gw = await start_admin(config(ROUTE, admin_token=TOKEN), provider,
                           consul=ConsulSettings.from_address(consul_addr))
    [service] = (await gw.get("/actuator/admin/data"))[2]["services"]
    assert (service["source"], service["error"]) == ("consul", None)
    by_id = {i["id"]: i for i in service["instances"]}
    assert (by_id["ok"]["status"], by_id["ok"]["in_pool"], by_id["ok"]["stats"]["node"]) == ("passing", True,
                                                                                              "node-a")
    assert (by_id["sick"]["status"], by_id["sick"]["in_pool"]) == ("critical", False)
    assert {"name": "ttl", "status": "critical"} in by_id["sick"]["checks"]
    assert by_id["sick"]["stats"]["reachable"] is False


async def test_admin_data_falls_back_to_discovery_when_consul_does_not_answer(start_admin: StartAdmin,
                                                                             start_node: StartNode) -> None:
    node_a = await start_node("node-a")
    gw = await start_admin(config(ROUTE, admin_token=TOKEN), StaticProvider({"ws-service": (node_a.endpoint,)}),
                           consul=ConsulSettings("127.0.0.1", free_port()))
    [service] = (await gw.get("/actuator/admin/data"))[2]["services"]
    assert service["error"].startswith("Consul did not answer")
    [instance] = service["instances"]
    assert (instance["status"], instance["stats"]["node"]) == ("unknown", "node-a")
