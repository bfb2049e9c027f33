"""CORS as SCG applies it: tables from SCG's CorsGlobalTests, CorsPerRouteTests and SimpleUrlHandlerCorsTests
(spring-cloud-gateway-server-webflux/src/test/java/org/springframework/cloud/gateway/cors/, with their YAML files
application-cors-global-config.yml and application-cors-per-route-config.yml), and Spring's own
CorsConfigurationTests / DefaultCorsProcessorTests cases for origins, patterns, methods and headers.
"""

from __future__ import annotations

import pytest

from gateway.config.loader import load_config_text
from gateway.errors import ConfigError
from gateway.model import Headers, LocalAnswer, RequestView
from gateway.routing.cors import CorsConfig, CorsEdit, process
from gateway.routing.table import RouteTable, apply_response_edits

GLOBAL_YAML = """\
spring:
  cloud:
    gateway.server.webflux:
      globalcors:
        cors-configurations:
          '[/**]':
            maxAge: 10
            allowedOrigins: "*"
            allowedMethods:
              - GET
      routes:
        - id: abc
          uri: http://127.0.0.1:9
          predicates:
            - Path=/abc/**
"""

PER_ROUTE_YAML = """\
spring:
  cloud:
    gateway.server.webflux:
      routes:
        - id: cors_preflight_test
          uri: http://127.0.0.1:9
          predicates:
            - Path=/abc/**
          metadata:
            cors:
              allowedOrigins: 'domain.com'
              allowedMethods: [ GET, POST ]
              allowedHeaders: '*'
              allowCredentials: true
              maxAge: 30
        - id: cors_test
          uri: http://127.0.0.1:9
          predicates:
            - Path=/cors/**
          filters:
            - StripPrefix=1
          metadata:
            cors:
              allowedOrigins: https://test.com
              allowedMethods:
                - GET
                - PUT
              allowedHeaders: '*'
"""


def request(method: str, path: str, *headers: tuple[str, str]) -> RequestView:
    return RequestView(method, path, "", (("Host", "www.path.org"), *headers))


def outcome(yaml_text: str, req: RequestView) -> tuple[int | None, Headers]:
    """What the gateway does: (status of its own answer or None when it forwards, the CORS headers)."""
    table = RouteTable(load_config_text(yaml_text))
    match = table.match(req)
    if match is None:
        return 404, ()
    plan = match.plan(req)
    if plan.answer is not None:
        status, headers = apply_response_edits(plan.answer.status, plan.answer.headers, plan.response_headers)
        return status, tuple((k, v) for k, v in headers if k.startswith("Access-Control"))
    _, headers = apply_response_edits(200, (), plan.response_headers)
    return None, tuple((k, v) for k, v in headers if k.startswith("Access-Control"))


PREFLIGHT = (("Origin", "domain.com"), ("Access-Control-Request-Method", "GET"))


@pytest.mark.parametrize(
    ("yaml_text", "req", "expected"),
    [
        # CorsGlobalTests.testPreFlightCorsRequest / testCorsRequest.
        (GLOBAL_YAML, request("OPTIONS", "/abc/123/function", *PREFLIGHT),
         (200, (("Access-Control-Allow-Origin", "*"), ("Access-Control-Allow-Methods", "GET"),
                ("Access-Control-Max-Age", "10")))),
        (GLOBAL_YAML, request("GET", "/abc/123/function", ("Origin", "domain.com")),
         (None, (("Access-Control-Allow-Origin", "*"),))),
        # Without add-to-simple-url-handler-mapping a preflight no route matches is refused.
        (GLOBAL_YAML, request("OPTIONS", "/elsewhere", *PREFLIGHT), (403, ())),
        (GLOBAL_YAML, request("GET", "/elsewhere", ("Origin", "domain.com")), (404, ())),
        # CorsPerRouteTests.testPreFlightCorsRequest.
        (PER_ROUTE_YAML, request("OPTIONS", "/abc", *PREFLIGHT),
         (200, (("Access-Control-Allow-Origin", "domain.com"), ("Access-Control-Allow-Methods", "GET,POST"),
                ("Access-Control-Allow-Credentials", "true"), ("Access-Control-Max-Age", "30")))),
        # CorsPerRouteTests.testPreFlightForbiddenCorsRequest: the origin is not https://test.com.
        (PER_ROUTE_YAML, request("GET", "/cors", *PREFLIGHT), (403, ())),
        # CorsPerRouteTests.testCorsValidatedRequest.
        (PER_ROUTE_YAML, request("GET", "/cors/status/201", ("Origin", "https://test.com")),
         (None, (("Access-Control-Allow-Origin", "https://test.com"),))),
        # Same-origin and origin-less requests are not CORS requests.
        (PER_ROUTE_YAML, request("GET", "/cors/x"), (None, ())),
        (PER_ROUTE_YAML, request("GET", "/cors/x", ("Origin", "http://www.path.org")), (None, ())),
        # A method the route does not allow (DELETE) is refused.
        (PER_ROUTE_YAML, request("OPTIONS", "/cors/x", ("Origin", "https://test.com"),
                                 ("Access-Control-Request-Method", "DELETE")), (403, ())),
    ],
)
def test_cors_scg_tables(yaml_text: str, req: RequestView, expected: tuple[int | None, Headers]) -> None:
    assert outcome(yaml_text, req) == expected


def test_cors_simple_url_handler_mapping() -> None:
    """SimpleUrlHandlerCorsTests: preflights and CORS requests no route matches get the global configuration."""
    simple = "      globalcors:\n        add-to-simple-url-handler-mapping: true\n"
    yaml_text = GLOBAL_YAML.replace("      globalcors:\n", simple)
    assert outcome(yaml_text, request("OPTIONS", "/elsewhere", *PREFLIGHT)) == (
        200, (("Access-Control-Allow-Origin", "*"), ("Access-Control-Allow-Methods", "GET"),
              ("Access-Control-Max-Age", "10")))
    assert outcome(yaml_text, request("GET", "/elsewhere", ("Origin", "domain.com"))) == (
        404, (("Access-Control-Allow-Origin", "*"),))


def test_cors_without_configuration_nothing_changes() -> None:
    yaml_text = "routes:\n  - id: r\n    uri: http://127.0.0.1:9\n    predicates: [Path=/**]\n"
    assert outcome(yaml_text, request("OPTIONS", "/x", *PREFLIGHT)) == (None, ())


@pytest.mark.parametrize(
    ("config", "origin", "expected"),
    [
        (CorsConfig(allowed_origins=("https://domain1.com",)), "https://domain1.com", "https://domain1.com"),
        (CorsConfig(allowed_origins=("https://domain1.com/",)), "https://DOMAIN1.com/", "https://DOMAIN1.com/"),
        (CorsConfig(allowed_origins=("https://domain1.com",)), "https://domain2.com", None),
        (CorsConfig(allowed_origins=("*",)), "https://any.org", "*"),
        (CorsConfig(allowed_origin_patterns=("https://*.domain1.com",)), "https://a.domain1.com",
         "https://a.domain1.com"),
        (CorsConfig(allowed_origin_patterns=("https://*.domain1.com",)), "https://domain1.com", None),
        (CorsConfig(allowed_origin_patterns=("https://*.domain1.com:[8080,8081]",)), "https://a.domain1.com:8081",
         "https://a.domain1.com:8081"),
        (CorsConfig(allowed_origin_patterns=("https://*.domain1.com:[8080,8081]",)), "https://a.domain1.com:9000",
         None),
        (CorsConfig(allowed_origin_patterns=("https://*.domain1.com:[*]",)), "https://a.domain1.com",
         "https://a.domain1.com"),
        (CorsConfig(allowed_origin_patterns=("*",), allow_credentials=True), "https://x.org", "https://x.org"),
        (CorsConfig(), "https://x.org", None),
    ],
)
def test_cors_check_origin(config: CorsConfig, origin: str, expected: str | None) -> None:
    assert config.check_origin(origin) == expected


@pytest.mark.parametrize(
    ("config", "method", "expected"),
    [
        (CorsConfig(), "GET", ("GET", "HEAD")),
        (CorsConfig(), "POST", None),
        (CorsConfig(allowed_methods=("*",)), "PATCH", ("PATCH",)),
        (CorsConfig(allowed_methods=("get", "post")), "POST", ("GET", "POST")),
    ],
)
def test_cors_check_method(config: CorsConfig, method: str, expected: tuple[str, ...] | None) -> None:
    assert config.check_method(method) == expected


@pytest.mark.parametrize(
    ("allowed", "requested", "expected"),
    [
        ((), (), ()),
        ((), ("X-A",), None),
        (("*",), ("X-A", "x-b"), ("X-A", "x-b")),
        (("x-a",), ("X-A", "X-B"), ("X-A",)),
        (("x-c",), ("X-A",), None),
    ],
)
def test_cors_check_headers(allowed: tuple[str, ...], requested: tuple[str, ...],
                            expected: tuple[str, ...] | None) -> None:
    assert CorsConfig(allowed_headers=allowed).check_headers(requested) == expected


def test_cors_preflight_with_headers_exposed_headers_and_credentials() -> None:
    config = CorsConfig(allowed_origins=("https://app.example",), allowed_methods=("PUT",),
                        allowed_headers=("X-Token",), exposed_headers=("X-Total",), allow_credentials=True)
    pre = request("OPTIONS", "/", ("Origin", "https://app.example"), ("Access-Control-Request-Method", "PUT"),
                  ("Access-Control-Request-Headers", "x-token"))
    answer = process(config, pre)
    assert isinstance(answer, LocalAnswer) and answer.status == 200
    assert ("Access-Control-Allow-Headers", "x-token") in answer.headers
    actual = process(config, request("PUT", "/", ("Origin", "https://app.example")))
    assert actual == CorsEdit((("Access-Control-Allow-Origin", "https://app.example"),
                               ("Access-Control-Expose-Headers", "X-Total"),
                               ("Access-Control-Allow-Credentials", "true")))
    # The instance's own Access-Control-Allow-Origin wins (DefaultCorsProcessor skips), Vary is still added.
    _, headers = actual.edit(200, (("Access-Control-Allow-Origin", "https://other"),))
    assert headers[0] == ("Access-Control-Allow-Origin", "https://other") and len(headers) == 4


def test_cors_refuses_credentials_with_any_origin() -> None:
    yaml_text = GLOBAL_YAML.replace("maxAge: 10", "maxAge: 10\n            allowCredentials: true")
    with pytest.raises(ConfigError, match="allowCredentials"):
        load_config_text(yaml_text)


def test_cors_refuses_unknown_key() -> None:
    with pytest.raises(ConfigError, match="allowedOrigin"):
        load_config_text(GLOBAL_YAML.replace("allowedOrigins", "allowedOrigin"))


def test_resilience4j_settings_are_read() -> None:
    yaml_text = GLOBAL_YAML + """\
resilience4j:
  circuitbreaker:
    configs:
      default:
        slidingWindowSize: 10
        minimumNumberOfCalls: 5
    instances:
      backendA:
        baseConfig: default
        failureRateThreshold: 20
        waitDurationInOpenState: 5s
  timelimiter:
    configs:
      default:
        timeoutDuration: 3s
    instances:
      backendA:
        timeoutDuration: 500ms
"""
    breakers = dict(load_config_text(yaml_text).breakers)
    assert breakers["default"].sliding_window_size == 10 and breakers["default"].timeout_s == 3.0
    a = breakers["backendA"]
    assert (a.failure_rate_threshold, a.wait_duration_in_open_state_s, a.minimum_number_of_calls, a.timeout_s) == (
        20.0, 5.0, 5, 0.5)


def test_cors_websocket_handshake_checks_origin_without_editing_the_101() -> None:
    ws = (("Upgrade", "websocket"), ("Connection", "Upgrade"))
    allowed = request("GET", "/cors/ws", ("Origin", "https://test.com"), *ws)
    assert outcome(PER_ROUTE_YAML, allowed) == (None, ())
    table = RouteTable(load_config_text(PER_ROUTE_YAML))
    match = table.match(allowed)
    assert match is not None and match.plan(allowed).response_headers == ()
    assert outcome(PER_ROUTE_YAML, request("GET", "/cors/ws", ("Origin", "https://evil.example"), *ws)) == (403, ())
