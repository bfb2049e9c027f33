"""discovery.locator's routes (pure): SCG's defaults, include-expression, lower-case-service-id, SpEL arguments.

The first table follows SCG's DiscoveryClientRouteDefinitionLocatorTests
(spring-cloud-gateway-server-webflux/src/test/java/org/springframework/cloud/gateway/discovery/).
"""

from __future__ import annotations

import pytest

from gateway.config.loader import load_config_text
from gateway.config.locator import (
    DEFAULT_PREFIX,
    LocatorSettings,
    ServiceInfo,
    SpelError,
    evaluate,
    locator_routes,
)
from gateway.config.model import GatewayConfig
from gateway.config.routes import build_any_filter, build_any_predicate
from gateway.model import RequestView
from gateway.routing.factory import Definition
from gateway.routing.table import RouteTable

EDGE = (("edge", "true"),)
SCG_SERVICES = {
    "SERVICE1": ServiceInfo("SERVICE1", EDGE, (EDGE,)),
    "Service2": ServiceInfo("Service2", (), ((),)),
    "service3": ServiceInfo("service3", (), ((), EDGE, EDGE)),
}


def _routes(settings: LocatorSettings, services: dict[str, ServiceInfo]) -> dict[str, tuple[str, str, str]]:
    routes = locator_routes(settings, services, build_any_predicate, build_any_filter)
    return {r.id: (f"lb://{r.uri.service}", r.predicates[0].describe(), r.filters[0].describe()) for r in routes}


def test_include_expression_works_as_in_scg() -> None:
    settings = LocatorSettings(enabled=True, lower_case_service_id=True, route_id_prefix="testedge_",
                               include_expression="metadata['edge'] == 'true'")
    routes = _routes(settings, SCG_SERVICES)
    assert sorted(routes) == ["testedge_SERVICE1", "testedge_service3"]
    uri, predicate, rewrite = routes["testedge_SERVICE1"]
    assert uri == "lb://SERVICE1"  # the uri keeps the service's spelling (SCG: hasHost("SERVICE1"))
    assert "/service1/**" in predicate
    assert "/service1/?(?<remaining>.*)" in rewrite and "/${remaining}" in rewrite


@pytest.mark.parametrize(("expression", "included"), [
    ("true", ["SERVICE1", "Service2", "service3"]),
    ("false", []),
    ("metadata['edge'] == 'true'", ["SERVICE1", "service3"]),
    ("metadata['edge'] != null", ["SERVICE1", "service3"]),
    ("!(metadata['edge'] == 'true')", ["Service2", "service3"]),  # service3 has an instance without it
    ("serviceId.startsWith('service')", ["service3"]),
    ("serviceId.toLowerCase(Locale.ROOT).startsWith('service')", ["SERVICE1", "Service2", "service3"]),
    ("serviceId matches 'S.*'", ["SERVICE1", "Service2"]),
    ("serviceId == 'Service2' || metadata.containsKey('edge')", ["SERVICE1", "Service2", "service3"]),
    ("serviceId != 'consul' and metadata['edge'] == 'true'", ["SERVICE1", "service3"]),
])
def test_include_expression_forms(expression: str, included: list[str]) -> None:
    settings = LocatorSettings(enabled=True, include_expression=expression)
    assert sorted(_routes(settings, SCG_SERVICES)) == sorted(DEFAULT_PREFIX + name for name in included)


def test_default_route_matches_and_rewrites_like_scg() -> None:
    settings = LocatorSettings(enabled=True, lower_case_service_id=True)
    routes = locator_routes(settings, {"ORDERS": ServiceInfo("ORDERS")}, build_any_predicate, build_any_filter)
    table = RouteTable(GatewayConfig(routes=routes))
    for path, forwarded in (("/orders/a/b", "/a/b"), ("/orders/", "/"), ("/orders", "/")):
        match = table.match(RequestView("GET", path))
        assert match is not None, path
        assert match.plan(RequestView("GET", path)).path == forwarded
    assert table.match(RequestView("GET", "/ordersx/a")) is None


@pytest.mark.parametrize(("text", "value"), [
    ("'/'+serviceId+'/**'", "/svc/**"),
    ("'/' + serviceId + '/?(?<remaining>.*)'", "/svc/?(?<remaining>.*)"),
    ("'/${remaining}'", "/${remaining}"),
    ("'it''s'", "it's"),
    ("metadata['zone']", "eu"),
    ("'lb://'+serviceId", "lb://svc"),
])
def test_spel_subset(text: str, value: str) -> None:
    assert evaluate(text, ServiceInfo("svc", (("zone", "eu"),))) == value


@pytest.mark.parametrize("text", ["T(java.lang.Runtime).getRuntime()", "serviceId.hashCode()", "'open", "1 +"])
def test_spel_outside_the_subset_is_refused(text: str) -> None:
    with pytest.raises(SpelError):
        evaluate(text, ServiceInfo("svc"))


def test_locator_settings_from_yaml_with_custom_predicates_and_filters() -> None:
    config = load_config_text("""
spring:
  cloud:
    gateway:
      discovery:
        locator:
          enabled: true
          route-id-prefix: "edge_"
          predicates:
            - name: Path
              args:
                pattern: "'/api/'+serviceId+'/**'"
          filters:
            - name: RewritePath
              args:
                regexp: "'/api/' + serviceId + '/(?<remaining>.*)'"
                replacement: "'/${remaining}'"
""")
    assert config.locator is not None
    assert config.discovery is not None  # a locator needs Consul even without lb:// routes
    routes = locator_routes(config.locator, {"a": ServiceInfo("a")}, build_any_predicate, build_any_filter)
    (route,) = routes
    assert route.id == "edge_a"
    match = RouteTable(GatewayConfig(routes=routes)).match(RequestView("GET", "/api/a/x"))
    assert match is not None and match.plan(RequestView("GET", "/api/a/x")).path == "/x"


def test_locator_expression_error_names_its_line() -> None:
    from gateway.errors import ConfigError

    with pytest.raises(ConfigError) as caught:
        load_config_text("spring.cloud.gateway.discovery.locator:\n  enabled: true\n"
                         "  include-expression: \"T(System).exit(1)\"\n")
    assert caught.value.line == 2
    assert "discovery.locator" in str(caught.value)


def test_definitions_are_kept_as_spel_until_a_service_is_known() -> None:
    settings = LocatorSettings(enabled=True, filters=(Definition("StripPrefix", (("parts", "1"),)),))
    (route,) = locator_routes(settings, {"s": ServiceInfo("s")}, build_any_predicate, build_any_filter)
    assert route.filters[0].name == "StripPrefix"
