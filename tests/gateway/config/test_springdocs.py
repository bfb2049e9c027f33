"""Whole Spring files: documents, profiles, Spring's spellings of keys, and every gateway key accounted for."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from gateway.config.loader import load_config_text
from gateway.config.springdocs import key_parts, profile_matches
from gateway.errors import ConfigError


@pytest.mark.parametrize(("key", "parts"), [
    ("a", ["a"]),
    ("spring.cloud.gateway", ["spring", "cloud", "gateway"]),
    ("routes[0]", ["routes", 0]),
    ("routes[12].id", ["routes", 12, "id"]),
    ("args[pattern]", ["args", "pattern"]),
    ("[/**]", ["/**"]),
    ("cors-configurations.[/**].allowedOrigins", ["cors-configurations", "/**", "allowedOrigins"]),
    ("a..b", ["a..b"]),
])
def test_key_parts(key: str, parts: list[str | int]) -> None:
    assert key_parts(key) == parts


# After Spring Framework's ProfilesTests (spring-core/src/test/java/org/springframework/core/env/ProfilesTests.java).
@pytest.mark.parametrize(("expression", "active", "matches"), [
    ("spring", {"spring"}, True),
    ("spring", {"framework"}, False),
    ("!spring", {"framework"}, True),
    ("!spring", {"spring"}, False),
    ("spring, framework", {"framework"}, True),
    ("spring & framework", {"spring"}, False),
    ("spring & framework", {"spring", "framework"}, True),
    ("spring | framework", {"framework"}, True),
    ("(spring & framework) | java", {"java"}, True),
    ("!(spring & framework)", {"spring"}, True),
    ("!(spring & framework)", {"spring", "framework"}, False),
])
def test_profile_expressions(expression: str, active: set[str], matches: bool) -> None:
    assert profile_matches(expression, frozenset(active)) is matches


PROFILES = """
spring:
  profiles:
    active: dev
  cloud.gateway.routes:
    - id: base
      uri: http://base:1
---
spring:
  config.activate.on-profile: dev
  cloud.gateway.routes:
    - id: dev
      uri: http://dev:1
---
spring:
  profiles: prod
  cloud:
    gateway:
      routes:
        - id: prod
          uri: http://prod:1
---
spring.config.activate.on-profile: "!prod"
server.port: 9999
"""


@pytest.mark.parametrize(("profiles", "env", "routes", "port"), [
    (None, {}, ["dev"], 9999),  # the file's spring.profiles.active; a later document's list replaces the first
    (["prod"], {}, ["prod"], 8080),  # --profile wins over the file
    (None, {"SPRING_PROFILES_ACTIVE": "prod"}, ["prod"], 8080),
    (["staging"], {}, ["base"], 9999),  # no document for it: only the unconditional ones (and "!prod")
    (["dev,prod"], {}, ["prod"], 8080),  # both apply in file order: prod comes later
])
def test_documents_apply_for_the_active_profiles_later_ones_winning(
        profiles: list[str] | None, env: dict[str, str], routes: list[str], port: int) -> None:
    config = load_config_text(PROFILES, env=env, profiles=profiles)
    assert [r.id for r in config.routes] == routes
    assert config.server.port == port


def test_no_active_profile_means_default() -> None:
    text = "spring.cloud.gateway.routes: [{id: a, uri: 'http://a:1'}]\n---\nspring.profiles: default\n" \
           "spring.cloud.gateway.routes: [{id: d, uri: 'http://d:1'}]\n"
    assert [r.id for r in load_config_text(text).routes] == ["d"]
    assert [r.id for r in load_config_text(text, profiles=["x"]).routes] == ["a"]


def test_profile_groups_and_include() -> None:
    text = ("spring.profiles: {active: prod, include: extra, group: {prod: [eu, metrics]}}\n---\n"
            "spring.config.activate.on-profile: eu & extra\nserver.port: 7000\n")
    assert load_config_text(text).server.port == 7000


@pytest.mark.parametrize("text", [
    # indexed keys, as a .properties file writes them (and Spring accepts inside YAML)
    "spring.cloud.gateway.routes[0].id: r\nspring.cloud.gateway.routes[0].uri: http://h:1\n"
    "spring.cloud.gateway.routes[0].predicates[0]: Path=/a/**\n",
    # dotted keys inside YAML sections
    "spring:\n  cloud.gateway:\n    routes:\n      - id: r\n        uri: http://h:1\n"
    "        predicates[0]: Path=/a/**\n",
    # SCG 4.x's prefixes
    "spring.cloud.gateway.server.webflux.routes:\n  - {id: r, uri: 'http://h:1', predicates: [Path=/a/**]}\n",
    "spring.cloud.gateway.server.webmvc.routes:\n  - {id: r, uri: 'http://h:1', predicates: [Path=/a/**]}\n",
    "spring.cloud.gateway.mvc.routes:\n  - {id: r, uri: 'http://h:1', predicates: [Path=/a/**]}\n",  # SCG 4.0-4.2
    # SCG Server MVC's routes-map: the key is the id
    "spring.cloud.gateway.server.webmvc.routesMap:\n  r: {uri: 'http://h:1', predicates: [Path=/a/**]}\n",
    # SCG's one-line route: id=uri, predicates...
    "spring.cloud.gateway.routes:\n  - r=http://h:1, Path=/a/**\n",
    # `routes[0]:` as a section
    "spring.cloud.gateway.routes[0]:\n  id: r\n  uri: http://h:1\n  predicates: [Path=/a/**]\n",
])
def test_spring_spellings_of_one_route(text: str) -> None:
    (route,) = load_config_text(text).routes
    path = "Paths: [/a/**], match trailing slash: true"
    assert (route.id, route.uri.host, route.predicates[0].describe()) == ("r", "h", path)


def test_route_enabled_false_is_left_out() -> None:
    text = "routes:\n  - {id: a, uri: 'http://a:1', enabled: false}\n  - {id: b, uri: 'http://b:1', enabled: true}\n"
    assert [r.id for r in load_config_text(text).routes] == ["b"]


# The predicates' argument names, from SCG's factories' Config classes (spring-cloud-gateway-server-webflux/src/main/
# java/org/springframework/cloud/gateway/handler/predicate/*RoutePredicateFactory.java) and SCG 2.x's older names.
@pytest.mark.parametrize(("name", "args"), [
    ("Host", {"pattern": "**.example.org"}),
    ("Host", {"patterns": ["**.example.org", "a.b"]}),
    ("Path", {"pattern": "/a/**"}),
    ("Path", {"patterns": ["/a/**"], "matchTrailingSlash": "false"}),
    ("Path", {"patterns": ["/a/**"], "matchOptionalTrailingSeparator": "false"}),
    ("Method", {"methods": ["GET", "POST"]}),
    ("Header", {"header": "X-Id", "regexp": "\\d+"}),
    ("Query", {"param": "q", "regexp": "x."}),
    ("Cookie", {"name": "c", "regexp": "v"}),
    ("After", {"datetime": "2017-01-20T17:42:47.789-07:00[America/Denver]"}),
    ("Before", {"datetime": "2017-01-20T17:42:47.789-07:00[America/Denver]"}),
    ("Between", {"datetime1": "2017-01-20T17:42:47.789-07:00[America/Denver]",
                 "datetime2": "2017-01-21T17:42:47.789-07:00[America/Denver]"}),
    ("RemoteAddr", {"sources": ["192.168.1.1/24"]}),
    ("Weight", {"group": "g", "weight": "8"}),
])
def test_every_predicate_argument_name_scg_documents(name: str, args: dict[str, object]) -> None:
    import json

    text = f"routes:\n  - id: r\n    uri: http://h:1\n    predicates:\n      - name: {name}\n" \
           f"        args: {json.dumps(args)}\n"
    (route,) = load_config_text(text).routes
    assert route.predicates[0].name == name


@pytest.mark.parametrize(("text", "line", "key"), [
    ("spring.cloud.gateway:\n  routes: []\n  no-such-thing: 1\n", 3, "spring.cloud.gateway.no-such-thing"),
    ("spring.cloud.gateway:\n  globalcorz:\n    a: 1\n", 3, "spring.cloud.gateway.globalcorz"),
    ("spring.cloud.gateway.httpclient.pool.max-idle-time: 10s\n", 1, "spring.cloud.gateway.httpclient.pool"),
    ("spring.cloud.gateway.x-forwarded.enabled: false\n", 1, "spring.cloud.gateway.x-forwarded.enabled"),
    ("spring.cloud.gateway.forwarded.enabled: true\n", 1, "spring.cloud.gateway.forwarded.enabled"),
    ("spring.cloud.gateway.filter.strip-prefix.enabled: false\n", 1,
     "spring.cloud.gateway.filter.strip-prefix.enabled"),
    ("x: 1\n---\nspring.cloud.gateway.server.webflux:\n  routes:\n    - id: a\n      uri: http://a:1\n"
     "      colour: red\n",
     7, "spring.cloud.gateway.server.webflux.routes[0].colour"),
    ("spring.cloud.gateway.server.reactive.routes: []\n", 1, "spring.cloud.gateway.server.reactive"),
])
def test_a_gateway_key_wsgate_does_not_implement_is_refused_naming_its_line_or_warned(
        text: str, line: int, key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config_text(text, file="f.yml")
    assert (caught.value.line, caught.value.key) == (line, key)
    config = load_config_text(text, file="f.yml", unknown_filters="warn")
    assert any(w.startswith(f"f.yml:{line}: {key}: ") for w in config.warnings), config.warnings


@pytest.mark.parametrize("text", [
    "spring.cloud.gateway.x-forwarded: {enabled: true, for-enabled: true, prefix-enabled: true}\n",
    "spring.cloud.gateway: {enabled: true, metrics.enabled: true, forwarded.enabled: false}\n",
    "spring.cloud.gateway.filter.strip-prefix.enabled: true\nspring.cloud.gateway.predicate.path.enabled: true\n",
    "spring.cloud.gateway.httpclient: {connect-timeout: 1000, response-timeout: 5s}\n",
    "logging.level.org.springframework.cloud.gateway: TRACE\neureka.client.enabled: false\n",  # not the gateway's
])
def test_keys_wsgate_honours_or_that_are_not_the_gateways_load(text: str) -> None:
    assert load_config_text(text).warnings == ()


def test_errors_in_a_later_document_name_their_line() -> None:
    text = "a: 1\n---\nb: 2\n---\nroutes:\n  - id: r\n    uri: ftp-not-http\n"
    with pytest.raises(ConfigError) as caught:
        load_config_text(text, file="f.yml")
    assert caught.value.line == 7


def test_check_prints_the_route_table_and_warnings_and_exits_0_or_2(tmp_path: Path) -> None:
    good = tmp_path / "good.yml"
    good.write_text("spring.cloud.gateway.routes:\n  - id: r\n    uri: lb://svc\n    predicates: [Path=/a/**]\n"
                    "    filters: [StripPrefix=1, TeamFilter]\n---\nspring.config.activate.on-profile: p\n"
                    "wsgate.unknown-filters: warn\n")
    run = [sys.executable, "-m", "gateway", "--check", str(good)]
    done = subprocess.run(run, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert f"{good}:5: spring.cloud.gateway.routes[0].filters[1]: unknown filter 'TeamFilter'" in done.stderr
    done = subprocess.run([*run, "--profile", "p"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "r   lb://svc" in done.stdout and "[StripPrefix parts = 1]" in done.stdout
    assert f"warning: {good}:5: spring.cloud.gateway.routes[0].filters[1]: unknown filter 'TeamFilter'" in done.stdout
    assert "1 route(s), 1 warning(s)" in done.stdout
    done = subprocess.run([sys.executable, "-m", "gateway", "--check", str(good), "--unknown-filters", "warn"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0


# After SCG's CloudFoundryRouteServiceRoutePredicateFactoryTest (spring-cloud-gateway-server-webflux/src/test/java/
# org/springframework/cloud/gateway/handler/predicate/): all three route-service headers, or no match.
@pytest.mark.parametrize(("headers", "matches"), [
    ({"X-CF-Forwarded-Url": "https://a.b", "X-CF-Proxy-Signature": "s", "X-CF-Proxy-Metadata": "m"}, True),
    ({"X-CF-Forwarded-Url": "https://a.b", "X-CF-Proxy-Signature": "s"}, False),
    ({}, False),
])
def test_cloud_foundry_route_service_predicate(headers: dict[str, str], matches: bool) -> None:
    from gateway.model import RequestView
    from gateway.routing.table import RouteTable

    config = load_config_text("routes:\n  - id: cf\n    uri: http://h:1\n    predicates: [CloudFoundryRouteService=]\n")
    found = RouteTable(config).match(RequestView("GET", "/", headers=tuple(headers.items())))
    assert (found is not None) is matches


@pytest.mark.parametrize(("env", "port"), [
    ({}, 8080),
    ({"KUBERNETES_SERVICE_HOST": "10.0.0.1", "KUBERNETES_SERVICE_PORT": "443"}, 7001),
    ({"VCAP_APPLICATION": "{}"}, 7002),
])
def test_documents_on_a_cloud_platform_apply_only_there(env: dict[str, str], port: int) -> None:
    text = ("server.port: 8080\n---\nspring.config.activate.on-cloud-platform: kubernetes\nserver.port: 7001\n"
            "---\nspring.config.activate.on-cloud-platform: cloud-foundry\nserver.port: 7002\n")
    assert load_config_text(text, env=env).server.port == port


# After SCG's XForwardedRemoteAddrRoutePredicateFactoryTests (spring-cloud-gateway-server-webflux/src/test/java/org/
# springframework/cloud/gateway/handler/predicate/), plus maxTrustedIndex and the several-headers fallback of its
# XForwardedRemoteAddressResolver.
@pytest.mark.parametrize(("predicate", "xff", "peer", "matches"), [
    ("XForwardedRemoteAddr=12.34.56.78", ["12.34.56.78"], "10.0.0.1", True),  # xForwardedRemoteAddrWorks
    ("XForwardedRemoteAddr=12.34.56.78", ["99.99.99.99,12.34.56.78"], "10.0.0.1", True),  # right-most by default
    ("XForwardedRemoteAddr=12.34.56.78", ["99.99.99.99"], "10.0.0.1", False),  # xForwardedRemoteAddrRejects
    ("{name: XForwardedRemoteAddr, args: {sources: 99.99.99.0/24, maxTrustedIndex: 2}}",
     ["99.99.99.99, 12.34.56.78"], "10.0.0.1", True),
    ("{name: XForwardedRemoteAddr, args: {sources: 99.99.99.0/24, maxTrustedIndex: 5}}",
     ["99.99.99.99, 12.34.56.78"], "10.0.0.1", True),  # past the left end: the left-most entry
    ("XForwardedRemoteAddr=10.0.0.0/8", [], "10.0.0.1", True),  # no header: the peer address
    ("XForwardedRemoteAddr=12.34.56.78", ["12.34.56.78", "12.34.56.78"], "10.0.0.1", False),  # two headers: peer
])
def test_x_forwarded_remote_addr_predicate(predicate: str, xff: list[str], peer: str, matches: bool) -> None:
    from gateway.model import RequestView
    from gateway.routing.table import RouteTable

    config = load_config_text(f"routes:\n  - id: x\n    uri: http://h:1\n    predicates: [\"{predicate}\"]\n"
                              if predicate.startswith("X") else
                              f"routes:\n  - id: x\n    uri: http://h:1\n    predicates: [{predicate}]\n")
    request = RequestView("GET", "/", headers=tuple(("X-Forwarded-For", v) for v in xff), remote_addr=peer)
    assert (RouteTable(config).match(request) is not None) is matches
