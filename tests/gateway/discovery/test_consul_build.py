"""Consul health JSON -> endpoints (pure, table-driven)."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.discovery.base import Endpoint
from gateway.discovery.consul_build import aggregate_status, build_endpoint, build_endpoints


def entry(*, node_addr: str = "10.0.0.9", addr: str = "", port: Any = 8080, sid: str = "svc-1",
          checks: tuple[str, ...] = ("passing",), tags: Any = None, meta: Any = None, weights: Any = None
          ) -> dict[str, Any]:
    service: dict[str, Any] = {"ID": sid, "Service": "svc", "Address": addr, "Port": port, "Tags": tags,
                               "Meta": meta}
    if weights is not None:
        service["Weights"] = weights
    return {"Node": {"Node": "n1", "Address": node_addr}, "Service": service,
            "Checks": [{"CheckID": f"c{i}", "Status": s} for i, s in enumerate(checks)]}


@pytest.mark.parametrize(("statuses", "expected"), [
    ((), "passing"),
    (("passing", "passing"), "passing"),
    (("passing", "warning"), "warning"),
    (("warning", "critical"), "critical"),
    (("maintenance",), "critical"),
    (("weird",), "critical"),
])
def test_aggregate_status_is_the_worst_check(statuses: tuple[str, ...], expected: str) -> None:
    assert aggregate_status([{"Status": s} for s in statuses]) == expected


@pytest.mark.parametrize(("item", "passing_only", "expected"), [
    pytest.param(entry(addr="10.1.1.1"), True, Endpoint("10.1.1.1", 8080, "svc-1"), id="service-address"),
    pytest.param(entry(addr=""), True, Endpoint("10.0.0.9", 8080, "svc-1"), id="node-address-fallback"),
    pytest.param(entry(checks=("passing", "critical")), True, None, id="critical-dropped"),
    pytest.param(entry(checks=("warning",)), True, None, id="warning-dropped-when-passing-only"),
    pytest.param(entry(checks=("warning",)), False, Endpoint("10.0.0.9", 8080, "svc-1"), id="warning-kept"),
    pytest.param(entry(checks=("critical",)), False, None, id="critical-dropped-always"),
    pytest.param(entry(tags=["a", "b"], meta={"zone": "z1", "v": "2"}), True,
                 Endpoint("10.0.0.9", 8080, "svc-1", tags=("a", "b"), meta=(("v", "2"), ("zone", "z1"))),
                 id="tags-and-meta"),
    pytest.param(entry(weights={"Passing": 5, "Warning": 1}), True, Endpoint("10.0.0.9", 8080, "svc-1", weight=5),
                 id="passing-weight"),
    pytest.param(entry(weights={"Passing": 5, "Warning": 2}, checks=("warning",)), False,
                 Endpoint("10.0.0.9", 8080, "svc-1", weight=2), id="warning-weight"),
    pytest.param(entry(weights={"Passing": 0}), True, None, id="zero-weight-dropped"),
    pytest.param(entry(weights={"Passing": "x"}), True, Endpoint("10.0.0.9", 8080, "svc-1"), id="bad-weight"),
    pytest.param(entry(port=0), True, None, id="port-zero"),
    pytest.param(entry(port="8080"), True, None, id="port-string"),
    pytest.param(entry(port=True), True, None, id="port-bool"),
    pytest.param(entry(port=70000), True, None, id="port-too-big"),
    pytest.param(entry(node_addr="", addr=""), True, None, id="no-address"),
    pytest.param({"Node": {}, "Service": None}, True, None, id="no-service"),
    pytest.param({**entry(), "Checks": "bogus"}, True, None, id="checks-not-a-list"),
    pytest.param(entry(sid=""), True, Endpoint("10.0.0.9", 8080, "10.0.0.9:8080"), id="missing-id"),
])
def test_build_endpoint(item: dict[str, Any], passing_only: bool, expected: Endpoint | None) -> None:
    assert build_endpoint(item, passing_only=passing_only) == expected


def test_build_endpoints_sorts_and_dedupes() -> None:
    entries = [entry(addr="10.0.0.3", sid="c"), entry(addr="10.0.0.1", sid="a"), entry(addr="10.0.0.1", sid="a"),
               entry(addr="10.0.0.2", sid="b", checks=("critical",))]
    assert [e.instance_id for e in build_endpoints(entries)] == ["a", "c"]


@pytest.mark.parametrize("payload", [None, {}, "x", [1, "two", None]])
def test_build_endpoints_ignores_malformed_payloads(payload: object) -> None:
    assert build_endpoints(payload) == ()
