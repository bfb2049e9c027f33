"""The route table: order, weights, variables, filter order, safe rewritten paths, actuator shape."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime

import pytest

from gateway.config.model import GatewayConfig, RouteSpec, parse_upstream
from gateway.errors import BadRequest
from gateway.model import HeaderOp, RequestView
from gateway.routing.factory import Definition
from gateway.routing.filters import build_filter
from gateway.routing.predicates import build_predicate
from gateway.routing.table import RouteTable, apply_header_ops, describe_routes


def spec(route_id: str, predicates: Sequence[str] = (), filters: Sequence[str] = (), *, order: int = 0,
         uri: str = "http://localhost:9000") -> RouteSpec:
    return RouteSpec(route_id, parse_upstream(uri), order,
                     predicates=tuple(build_predicate(Definition.shortcut(p)) for p in predicates),
                     filters=tuple(build_filter(Definition.shortcut(f)) for f in filters))


def table(*routes: RouteSpec, default_filters: Sequence[str] = (), rng: random.Random | None = None) -> RouteTable:
    defaults = tuple(build_filter(Definition.shortcut(f)) for f in default_filters)
    return RouteTable(GatewayConfig(routes=routes, default_filters=defaults), rng=rng)


def test_routing_sorts_by_order_then_file_order() -> None:
    routes = table(spec("late", ["Path=/**"], order=5), spec("first", ["Path=/a/**"], order=-1),
                   spec("second", ["Path=/**"]), spec("third", ["Path=/**"]))
    assert [r.id for r in routes.routes] == ["first", "second", "third", "late"]
    assert routes.match(RequestView("GET", "/a/x")).route.id == "first"  # type: ignore[union-attr]
    assert routes.match(RequestView("GET", "/b")).route.id == "second"  # type: ignore[union-attr]


def test_routing_all_predicates_must_hold() -> None:
    routes = table(spec("ws", ["Path=/ws/**", "Method=GET", "Header=Upgrade, (?i)websocket"]))
    assert routes.match(RequestView("GET", "/ws/x", headers=(("Upgrade", "WebSocket"),))) is not None
    assert routes.match(RequestView("POST", "/ws/x", headers=(("Upgrade", "websocket"),))) is None
    assert routes.match(RequestView("GET", "/ws/x")) is None


def test_routing_variables_come_from_path_and_host() -> None:
    routes = table(spec("r", ["Host={sub}.example.org", "Path=/red/{segment}"], ["SetPath=/{sub}/{segment}"]))
    request = RequestView("GET", "/red/blue", "q=1", (("Host", "eu.example.org:8080"),))
    match = routes.match(request)
    assert match is not None
    assert dict(match.variables) == {"sub": "eu", "segment": "blue"}
    plan = match.plan(request)
    assert (plan.target, plan.variables) == ("/eu/blue?q=1", (("segment", "blue"), ("sub", "eu")))


def test_routing_time_predicates_use_now() -> None:
    routes = table(spec("new", ["After=2030-01-01T00:00:00Z"]), spec("old", ["Path=/**"]))
    assert routes.match(RequestView("GET", "/")).route.id == "old"  # type: ignore[union-attr]
    later = datetime(2031, 1, 1, tzinfo=UTC)
    assert routes.match(RequestView("GET", "/"), now=later).route.id == "new"  # type: ignore[union-attr]


def test_routing_weight_splits_traffic_in_proportion() -> None:
    routes = table(spec("weight_high", ["Weight=group1, 8"], uri="https://weighthigh.org"),
                   spec("weight_low", ["Weight=group1, 2"], uri="https://weightlow.org"),
                   rng=random.Random(7))
    counts = Counter(routes.match(RequestView("GET", "/")).route.id for _ in range(2000))  # type: ignore[union-attr]
    assert counts["weight_high"] + counts["weight_low"] == 2000
    assert 0.75 < counts["weight_high"] / 2000 < 0.85


def test_routing_weight_combines_with_other_predicates() -> None:
    routes = table(spec("canary", ["Path=/api/**", "Weight=g, 0"]), spec("stable", ["Path=/api/**", "Weight=g, 1"]))
    assert {routes.match(RequestView("GET", "/api/x")).route.id for _ in range(50)} == {"stable"}  # type: ignore[union-attr]


def test_routing_plan_filter_order_is_scg_order() -> None:
    # SCG numbers default filters and route filters from 1 each and merges them by number.
    routes = table(spec("r", ["Path=/**"], ["StripPrefix=1", "PrefixPath=/p"]),
                   default_filters=["PrefixPath=/d", "AddRequestHeader=X-D, 1"])
    request = RequestView("GET", "/a/b")
    plan = routes.match(request).plan(request)  # type: ignore[union-attr]
    # /a/b -> PrefixPath=/d (default #1) -> /d/a/b -> StripPrefix=1 (route #1) -> /a/b -> PrefixPath=/p -> /p/a/b
    assert plan.path == "/p/a/b"
    assert plan.headers == (("X-D", "1"),)


@pytest.mark.parametrize(
    ("filters", "path", "expected"),
    [
        (["RewritePath=/ws-svc/(?<path>.*), /$\\{path}"], "/ws-svc/websocket", ("/websocket", "/ws-svc")),
        (["StripPrefix=2"], "/a/b/c", ("/c", "/a/b")),
        (["PrefixPath=/x"], "/y", ("/x/y", "")),
        (["RewritePath=/old, "], "/old", ("/", "")),
        (["RewritePath=/in, /a b"], "/in", ("/a%20b", "")),
    ],
)
def test_routing_plan_path_and_forwarded_prefix(filters: list[str], path: str, expected: tuple[str, str]) -> None:
    request = RequestView("GET", path)
    plan = table(spec("r", ["Path=/**"], filters)).match(request).plan(request)  # type: ignore[union-attr]
    assert (plan.path, plan.prefix) == expected


@pytest.mark.parametrize(
    ("filters", "path"),
    [
        (["RewritePath=/ws-svc/(?<p>.*), /$\\{p}"], "/ws-svc/../../etc/passwd"),
        (["RewritePath=/ws-svc/(?<p>.*), /$\\{p}"], "/ws-svc/%2e%2e/secret"),
        (["SetPath=/{seg}"], "/r/a%0d%0aX-Evil:%201"),
        (["AddRequestHeader=X-Seg, {seg}"], "/r/a%0d%0aX-Evil:%201"),
    ],
)
def test_routing_plan_refuses_unsafe_results(filters: list[str], path: str) -> None:
    request = RequestView("GET", path)
    match = table(spec("r", ["Path=/r/{seg}", "Path=/**"] if "{seg}" in "".join(filters) else ["Path=/**"],
                       filters)).match(request)
    assert match is not None
    with pytest.raises(BadRequest):
        match.plan(request)


def test_routing_plan_collects_response_ops_rate_limits_and_host_flag() -> None:
    routes = table(spec("r", ["Path=/**"], ["AddResponseHeader=X-A, 1", "PreserveHostHeader",
                                            "RequestRateLimiter=1, 2"]))
    request = RequestView("GET", "/")
    plan = routes.match(request).plan(request)  # type: ignore[union-attr]
    assert plan.response_headers == (HeaderOp("add", "X-A", "1"),)
    assert plan.preserve_host is True
    assert [(r.replenish_rate, r.burst_capacity) for r in plan.rate_limits] == [(1, 2)]


@pytest.mark.parametrize(
    ("headers", "ops", "expected"),
    [
        ((("A", "1"),), (HeaderOp("add", "A", "2"),), (("A", "1"), ("A", "2"))),
        ((("a", "1"), ("a", "2"), ("B", "x")), (HeaderOp("set", "A", "3"),), (("B", "x"), ("A", "3"))),
        ((("Set-Cookie", "s=1"), ("B", "x")), (HeaderOp("remove", "set-cookie"),), (("B", "x"),)),
        ((), (), ()),
    ],
)
def test_routing_apply_header_ops(headers: tuple[tuple[str, str], ...], ops: tuple[HeaderOp, ...],
                                  expected: tuple[tuple[str, str], ...]) -> None:
    assert apply_header_ops(headers, ops) == expected


def test_routing_describe_routes_matches_scg_actuator_example() -> None:
    route = spec("add_request_header_test", ["Host=**.addrequestheader.org", "Path=/headers"],
                 ["AddRequestHeader=X-Request-Foo, Bar", "PrefixPath=/httpbin"], uri="lb://testservice")
    default = (build_filter(Definition.shortcut("AddResponseHeader=X-Response-Default-Foo, Default-Bar")),)
    described = describe_routes(GatewayConfig(routes=(route,), default_filters=default))
    assert described == [{
        "predicate": "(Hosts: [**.addrequestheader.org] && Paths: [/headers], match trailing slash: true)",
        "route_id": "add_request_header_test",
        "filters": [
            "[[AddResponseHeader X-Response-Default-Foo = 'Default-Bar'], order = 1]",
            "[[AddRequestHeader X-Request-Foo = 'Bar'], order = 1]",
            "[[PrefixPath prefix = '/httpbin'], order = 2]",
        ],
        "uri": "lb://testservice",
        "metadata": {},
        "order": 0,
    }]
