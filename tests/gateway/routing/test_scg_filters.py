"""SCG 4.x filter factories beyond the path and header basics: one table per filter, each from the SCG test file
it names (spring-cloud-gateway-server-webflux/src/test/java/org/springframework/cloud/gateway/filter/factory/).
"""

from __future__ import annotations

from urllib.parse import parse_qsl

import pytest

from gateway.model import Headers, LocalAnswer, RequestView
from gateway.proxy.buffered import dechunk
from gateway.routing.factory import Definition, SpecError
from gateway.routing.filters import PlanState, build_filter
from gateway.routing.filters.misc import JsonAttributesEdit
from gateway.routing.table import apply_response_edits


def run(spec: str | Definition, path: str = "/", *, query: str = "", headers: Headers = (),
        variables: dict[str, str] | None = None) -> PlanState:
    definition = Definition.shortcut(spec) if isinstance(spec, str) else spec
    state = PlanState(RequestView("GET", path, query, headers), path, query, list(headers), dict(variables or {}))
    build_filter(definition).apply(state)
    return state


def response(spec: str | Definition, status: int, headers: Headers, *, request_headers: Headers = (),
             path: str = "/") -> tuple[int, Headers]:
    state = run(spec, path, headers=request_headers)
    return apply_response_edits(status, headers, tuple(state.response_ops))


def expanded(factory: str, **args: str | tuple[str, ...]) -> Definition:
    return Definition(factory, tuple(args.items()))


# -- AddResponseHeaderGatewayFilterFactoryTests (override) ------------------------------------------------------
@pytest.mark.parametrize(
    ("spec", "upstream", "expected"),
    [
        ("AddResponseHeader=X-Request-Example, ValueB", (), ["ValueB"]),
        ("AddResponseHeader=X-Request-Example, ValueB", (("X-Request-Example", "ValueA"),), ["ValueA", "ValueB"]),
        ("AddResponseHeader=X-Request-Example, ValueB, true", (("X-Request-Example", "ValueA"),),
         ["ValueA", "ValueB"]),
        ("AddResponseHeader=X-Request-Example, ValueB, false", (("X-Request-Example", "ValueA"),), ["ValueA"]),
        ("AddResponseHeader=X-Request-Example, ValueB, false", (), ["ValueB"]),
        ("AddResponseHeader=X-Request-Example, ValueB, false", (("X-Request-Example", " "),), [" ", "ValueB"]),
    ],
)
def test_scg_add_response_header_override(spec: str, upstream: Headers, expected: list[str]) -> None:
    _, headers = response(spec, 200, upstream)
    assert [v for k, v in headers if k == "X-Request-Example"] == expected


def test_scg_add_response_header_override_expanded_args() -> None:
    _, headers = response(expanded("AddResponseHeader", name="X-A", value="b", override="false"), 200,
                          (("X-A", "a"),))
    assert headers == (("X-A", "a"),)


# -- DedupeResponseHeaderGatewayFilterFactoryTests ---------------------------------------------------------------
ACAO = "Access-Control-Allow-Origin"


@pytest.mark.parametrize(
    ("spec", "values", "expected"),
    [
        (f"DedupeResponseHeader={ACAO}", ["https://musk.mars", "https://musk.mars"], ["https://musk.mars"]),
        (f"DedupeResponseHeader={ACAO}", ["1", "2", "1"], ["1"]),
        (f"DedupeResponseHeader={ACAO}, RETAIN_FIRST", ["1", "2", "1"], ["1"]),
        (f"DedupeResponseHeader={ACAO}, RETAIN_LAST", ["1", "2", "3"], ["3"]),
        (f"DedupeResponseHeader={ACAO}, RETAIN_UNIQUE", ["1", "2", "1", "3"], ["1", "2", "3"]),
        (f"DedupeResponseHeader={ACAO}, RETAIN_FIRST", ["only"], ["only"]),
    ],
)
def test_scg_dedupe_response_header(spec: str, values: list[str], expected: list[str]) -> None:
    _, headers = response(spec, 200, (*tuple((ACAO, v) for v in values), ("Other", "x")))
    assert [v for k, v in headers if k == ACAO] == expected
    assert ("Other", "x") in headers


def test_scg_dedupe_response_header_several_names_space_separated() -> None:
    names = "Access-Control-Allow-Credentials Access-Control-Allow-Origin"
    _, headers = response(f"DedupeResponseHeader={names}", 200, (
        ("Access-Control-Allow-Credentials", "true"), ("Access-Control-Allow-Credentials", "true"),
        (ACAO, "https://a"), (ACAO, "https://b")))
    assert headers == (("Access-Control-Allow-Credentials", "true"), (ACAO, "https://a"))


def test_scg_dedupe_response_header_refuses_unknown_strategy() -> None:
    with pytest.raises(SpecError, match="strategy"):
        build_filter(Definition.shortcut("DedupeResponseHeader=X-A, KEEP_SOME"))


# -- SetStatusGatewayFilterFactoryTests --------------------------------------------------------------------------
@pytest.mark.parametrize(("spec", "expected"), [("SetStatus=401", 401), ("SetStatus=UNAUTHORIZED", 401),
                                                ("SetStatus=BAD_GATEWAY", 502), ("SetStatus=418", 418)])
def test_scg_set_status(spec: str, expected: int) -> None:
    assert response(spec, 200, ())[0] == expected


def test_scg_set_status_refuses_unknown_name() -> None:
    with pytest.raises(SpecError):
        build_filter(Definition.shortcut("SetStatus=NOT_A_STATUS"))


# -- SecureHeadersGatewayFilterFactoryTests ----------------------------------------------------------------------
SECURE_DEFAULTS = {
    "X-Xss-Protection": "1 ; mode=block", "Strict-Transport-Security": "max-age=631138519",
    "X-Frame-Options": "DENY", "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": "default-src 'self' https:; font-src 'self' https: data:; img-src 'self' https: "
                               "data:; object-src 'none'; script-src https:; style-src 'self' https: "
                               "'unsafe-inline'",
    "X-Download-Options": "noopen", "X-Permitted-Cross-Domain-Policies": "none"}


def test_scg_secure_headers_defaults() -> None:
    _, headers = response("SecureHeaders", 200, ())
    assert dict(headers) == SECURE_DEFAULTS


def test_scg_secure_headers_disable_and_enable_permissions_policy() -> None:
    spec = expanded("SecureHeaders", disable=("x-frame-options", "strict-transport-security"),
                    enable=("permissions-policy",), permissionsPolicy="camera=()")
    _, headers = response(spec, 200, ())
    got = dict(headers)
    assert "X-Frame-Options" not in got and "Strict-Transport-Security" not in got
    assert got["Permissions-Policy"] == "camera=()"
    assert got["X-Content-Type-Options"] == "nosniff"


def test_scg_secure_headers_keep_what_the_response_has() -> None:
    _, headers = response("SecureHeaders", 200, (("X-Frame-Options", "SAMEORIGIN"),))
    assert [v for k, v in headers if k == "X-Frame-Options"] == ["SAMEORIGIN"]


# -- RedirectToGatewayFilterFactoryTests -------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("spec", "query", "expected"),
    [
        ("RedirectTo=302, https://example.org", "", LocalAnswer(302, (("Location", "https://example.org"),))),
        ("RedirectTo=301, https://example.org, true", "a=b",
         LocalAnswer(301, (("Location", "https://example.org?a=b"),))),
        ("RedirectTo=FOUND, https://example.org?x=1, true", "a=b",
         LocalAnswer(302, (("Location", "https://example.org?x=1&a=b"),))),
        ("RedirectTo=302, https://example.org, false", "a=b",
         LocalAnswer(302, (("Location", "https://example.org"),))),
    ],
)
def test_scg_redirect_to(spec: str, query: str, expected: LocalAnswer) -> None:
    assert run(spec, query=query).answer == expected


def test_scg_redirect_to_refuses_non_3xx() -> None:
    with pytest.raises(SpecError, match="3xx"):
        build_filter(Definition.shortcut("RedirectTo=200, https://example.org"))


# -- RequestSizeGatewayFilterFactoryTest (its integration test) --------------------------------------------------
@pytest.mark.parametrize(
    ("max_size", "length", "message"),
    [
        ("5000000", "6000000", "Request size is larger than permissible limit. Request size is 6.0 MB where "
                               "permissible limit is 5.0 MB"),
        ("1KB", "2000", "Request size is larger than permissible limit. Request size is 2.0 kB where permissible "
                        "limit is 1.0 kB"),
        ("5000000", "5000000", None),
        ("5000000", None, None),
    ],
)
def test_scg_request_size(max_size: str, length: str | None, message: str | None) -> None:
    headers = (("Content-Length", length),) if length else ()
    state = run(expanded("RequestSize", maxSize=max_size), headers=headers)
    assert state.answer == (LocalAnswer(413, (("errorMessage", message),)) if message else None)


def test_scg_request_size_has_no_shortcut() -> None:
    with pytest.raises(SpecError, match="shortcut"):
        build_filter(Definition.shortcut("RequestSize=5000000"))


# -- RequestHeaderSizeGatewayFilterFactoryTest -------------------------------------------------------------------
def test_scg_request_header_size() -> None:
    state = run("RequestHeaderSize=46B", headers=(("X-Big", "a" * 50), ("X-Small", "b")))
    assert state.answer == LocalAnswer(431, (("errorMessage", "Request Header/s size is larger than permissible "
                                                              "limit (46B). Request Header/s size for 'X-Big' is "
                                                              "55B."),))
    assert run("RequestHeaderSize=46B", headers=(("X-Small", "b"),)).answer is None
    custom = run(expanded("RequestHeaderSize", maxSize="10B", errorHeaderName="X-Why"), headers=(("X-A", "a" * 20),))
    assert custom.answer is not None and custom.answer.headers[0][0] == "X-Why"


# -- SetRequestHostHeaderGatewayFilterFactoryTests ---------------------------------------------------------------
def test_scg_set_request_host_header() -> None:
    state = run("SetRequestHostHeader=otherhost.io", headers=(("Host", "localhost"), ("X-A", "1")))
    assert state.headers == [("X-A", "1"), ("Host", "otherhost.io")]
    assert state.preserve_host


# -- AddRequestParameterGatewayFilterFactoryTests ----------------------------------------------------------------
@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("", [("example", "ValueA")]),
        ("baz=bam", [("baz", "bam"), ("example", "ValueA")]),
        ("name=%E6%89%8E%E6%A0%B9", [("name", "\u624e\u6839"), ("example", "ValueA")]),
    ],
)
def test_scg_add_request_parameter(query: str, expected: list[tuple[str, str]]) -> None:
    state = run("AddRequestParameter=example, ValueA", query=query)
    assert parse_qsl(state.query) == expected


# -- RemoveRequestParameterGatewayFilterFactoryTests -------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "query", "expected"),
    [
        ("foo", "foo=bar", {}),
        ("foo", "", {}),
        ("foo", "foo=bar&abc=xyz", {"abc": "xyz"}),
        ("foo", "foo=bar&aaa=abc%20xyz&bbb=%5Bxyz&ccc=,xyz", {"aaa": "abc xyz", "bbb": "[xyz", "ccc": ",xyz"}),
        ("foo", "foo=bar&aaa=%2Bxyz", {"aaa": "+xyz"}),
        ("baz[]", "foo=bar&baz%5B%5D=qux", {"foo": "bar"}),
        ("foo", "foo=bar&baz%5B%5D=qux", {"baz[]": "qux"}),
    ],
)
def test_scg_remove_request_parameter(name: str, query: str, expected: dict[str, str]) -> None:
    state = run(f"RemoveRequestParameter={name}", query=query)
    assert dict(parse_qsl(state.query)) == expected


# -- RewriteRequestParameterGatewayFilterFactoryTests ------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "replacement", "query", "expected"),
    [
        ("campaign", "fall2023", "size=small&campaign=old", {"size": ["small"], "campaign": ["fall2023"]}),
        ("campaign", "fall2023", "campaign=fall&size=small&campaign=old",
         {"size": ["small"], "campaign": ["fall2023"]}),
        ("campaign", "winter2023", "color=green&sort=popular", {"color": ["green"], "sort": ["popular"]}),
        ("campaign", "black friday~(1.A-B_C!)", "campaign=old&color=green",
         {"campaign": ["black friday~(1.A-B_C!)"], "color": ["green"]}),
        ("campaign[]", "red", "campaign%5B%5D=blue&color=green", {"campaign[]": ["red"], "color": ["green"]}),
        ("color", "white", "campaign%5B%5D=blue&color=green", {"campaign[]": ["blue"], "color": ["white"]}),
        ("color", "white+", "campaign=blue%2B&color=green", {"campaign": ["blue+"], "color": ["white+"]}),
    ],
)
def test_scg_rewrite_request_parameter(name: str, replacement: str, query: str,
                                       expected: dict[str, list[str]]) -> None:
    state = run(expanded("RewriteRequestParameter", name=name, replacement=replacement), query=query)
    got: dict[str, list[str]] = {}
    for key, value in parse_qsl(state.query):
        got.setdefault(key, []).append(value)
    assert got == expected


# -- MapRequestHeaderGatewayFilterFactoryTests -------------------------------------------------------------------
@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ((("a", "valueA"),), [("a", "valueA"), ("X-Request-Red", "valueA")]),
        ((("a", "valueA"), ("X-Request-Red", "valueB")),
         [("a", "valueA"), ("X-Request-Red", "valueB"), ("X-Request-Red", "valueA")]),
        ((("b", "x"),), [("b", "x")]),
        ((("a", "v1"), ("a", "v2")), [("a", "v1"), ("a", "v2"), ("X-Request-Red", "v1"), ("X-Request-Red", "v2")]),
    ],
)
def test_scg_map_request_header(headers: Headers, expected: list[tuple[str, str]]) -> None:
    assert run("MapRequestHeader=a, X-Request-Red", headers=headers).headers == expected


# -- AddRequestHeadersIfNotPresentGatewayFilterFactoryTests ------------------------------------------------------
@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ((), [("X-Request-Acme", "ValueA"), ("X-Request-Acme", "ValueB"), ("X-Request-Foo", "Bar")]),
        ((("X-Request-Acme", "Present"),), [("X-Request-Acme", "Present"), ("X-Request-Foo", "Bar")]),
        ((("X-Request-Acme", ""),), [("X-Request-Acme", ""), ("X-Request-Acme", "ValueA"),
                                      ("X-Request-Acme", "ValueB"), ("X-Request-Foo", "Bar")]),
    ],
)
def test_scg_add_request_headers_if_not_present(headers: Headers, expected: list[tuple[str, str]]) -> None:
    spec = "AddRequestHeadersIfNotPresent=X-Request-Acme:ValueA, X-Request-Acme:ValueB, X-Request-Foo:Bar"
    assert run(spec, headers=headers).headers == expected


def test_scg_add_request_headers_if_not_present_refuses_bad_pair() -> None:
    with pytest.raises(SpecError, match="key:value"):
        build_filter(Definition.shortcut("AddRequestHeadersIfNotPresent=X-A:1:2"))


# -- RewriteLocationResponseHeaderGatewayFilterFactoryTests ------------------------------------------------------
@pytest.mark.parametrize(
    ("spec", "path", "location", "expected"),
    [
        ("RewriteLocationResponseHeader", "/some/object/id",
         "https://object-service.prod.example.net/v2/some/object/id", "https://api.example.com:443/some/object/id"),
        ("RewriteLocationResponseHeader=AS_IN_REQUEST", "/v1/some/object/id",
         "https://backend.example.net/v1/some/object/id", "https://api.example.com:443/v1/some/object/id"),
        ("RewriteLocationResponseHeader=NEVER_STRIP", "/some/object/id",
         "https://backend.example.net/v1/some/object/id", "https://api.example.com:443/v1/some/object/id"),
        ("RewriteLocationResponseHeader=ALWAYS_STRIP, Location, example-api.com", "/v1/some/object/id",
         "https://backend.example.net:8443/v1/some/object/id", "https://example-api.com/some/object/id"),
        ("RewriteLocationResponseHeader=NEVER_STRIP, Location, , https|ftps", "/some/object/name",
         "http://object-service.prod.example.net/v1/some/object/id",
         "http://object-service.prod.example.net/v1/some/object/id"),
        ("RewriteLocationResponseHeader=NEVER_STRIP, Location, , https|ftps", "/some/object/name",
         "https://object-service.prod.example.net/v1/some/object/id", "https://api.example.com:443/v1/some/object/id"),
        # SCG's documented shortcut: empty hostValue and protocols mean their defaults.
        ("RewriteLocationResponseHeader=AS_IN_REQUEST, Location, ,", "/some/object/id",
         "http://backend:8080/v2/some/object/id", "http://api.example.com:443/some/object/id"),
    ],
)
def test_scg_rewrite_location_response_header(spec: str, path: str, location: str, expected: str) -> None:
    _, headers = response(spec, 201, (("Location", location),), request_headers=(("Host", "api.example.com:443"),),
                          path=path)
    assert dict(headers)["Location"] == expected


# -- RewriteResponseHeaderGatewayFilterFactoryTests --------------------------------------------------------------
@pytest.mark.parametrize(
    ("spec", "values", "expected"),
    [
        ("RewriteResponseHeader=X-Response-Foo, password=[^&]+, password=***",
         ["/42?user=ford&password=omg!what&flag=true"], ["/42?user=ford&password=***&flag=true"]),
        ("RewriteResponseHeader=X-Response-Foo, ^http, https", ["http://a", "http://b"], ["https://a", "https://b"]),
        ("RewriteResponseHeader=X-Response-Foo, (?<x>a), $\\{x}$\\{x}", ["banana"], ["baanaanaa"]),
    ],
)
def test_scg_rewrite_response_header(spec: str, values: list[str], expected: list[str]) -> None:
    _, headers = response(spec, 200, tuple(("X-Response-Foo", v) for v in values))
    assert [v for k, v in headers if k == "X-Response-Foo"] == expected


# -- RequestHeaderToRequestUriGatewayFilterFactoryTests ----------------------------------------------------------
@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("http://example.com/some/path?q=1", ("http://example.com", "/some/path", "q=1")),
        ("https://example.com:8443", ("https://example.com:8443", "/", "")),
        ("example", (None, "/orig", "")),
        ("ftp://example.com/x", (None, "/orig", "")),
        (None, (None, "/orig", "")),
    ],
)
def test_scg_request_header_to_request_uri(value: str | None, expected: tuple[str | None, str, str]) -> None:
    headers = (("X-CF-Forwarded-Url", value),) if value is not None else ()
    state = run("RequestHeaderToRequestUri=X-CF-Forwarded-Url", "/orig", headers=headers)
    assert (state.request_url, state.path, state.query) == expected


# -- FallbackHeadersGatewayFilterFactoryTests, TokenRelay, SaveSession, CacheRequestBody -------------------------
def test_scg_fallback_headers_only_after_a_failure() -> None:
    definition = Definition.shortcut("FallbackHeaders")
    plain = PlanState(RequestView("GET", "/"), "/", "", [], {})
    build_filter(definition).apply(plain)
    assert plain.headers == []
    failed = PlanState(RequestView("GET", "/"), "/", "", [], {}, failure=("java.util.concurrent.TimeoutException",
                                                                          "late"))
    build_filter(expanded("FallbackHeaders", executionExceptionTypeHeaderName="X-Type")).apply(failed)
    assert failed.headers == [("X-Type", "java.util.concurrent.TimeoutException"),
                              ("Execution-Exception-Message", "late"),
                              ("Root-Cause-Exception-Type", "java.util.concurrent.TimeoutException"),
                              ("Root-Cause-Exception-Message", "late")]


@pytest.mark.parametrize("spec", ["TokenRelay", "TokenRelay=keycloak", "SaveSession",
                                  "CacheRequestBody=java.lang.String"])
def test_scg_accepted_filters_leave_the_request_as_sent(spec: str) -> None:
    headers = (("Authorization", "Bearer abc"),)
    state = run(spec, "/p", query="a=1", headers=headers)
    assert (state.path, state.query, state.headers, state.answer) == ("/p", "a=1", list(headers), None)


@pytest.mark.parametrize("name", ["ModifyRequestBody", "ModifyResponseBody"])
def test_scg_java_only_filters_are_refused_with_the_reason(name: str) -> None:
    with pytest.raises(SpecError, match="only offers it through Java code"):
        build_filter(Definition.shortcut(name))


# -- RemoveJsonAttributesResponseBodyGatewayFilterFactoryTests ---------------------------------------------------
@pytest.mark.parametrize(
    ("fields", "recursive", "body", "expected"),
    [
        (("id", "color"), False, b'{"id":1,"color":"red","size":"M"}', b'{"size":"M"}'),
        (("id",), False, b'{"id":1,"a":{"id":2}}', b'{"a":{"id":2}}'),
        (("id",), True, b'{"id":1,"a":{"id":2,"b":[{"id":3,"k":1}]}}', b'{"a":{"b":[{"k":1}]}}'),
    ],
)
def test_scg_remove_json_attributes_edit(fields: tuple[str, ...], recursive: bool, body: bytes,
                                         expected: bytes) -> None:
    edit = JsonAttributesEdit(frozenset(fields), recursive)
    headers: Headers = (("Content-Type", "application/json"),)
    assert edit.edit_body(200, headers, body) == (headers, expected)
    assert edit.edit_body(200, (("Content-Type", "text/plain"),), body)[1] == body


def test_scg_remove_json_attributes_response_body_arguments() -> None:
    state = run("RemoveJsonAttributesResponseBody=id, color, true")
    assert state.body_edits == [JsonAttributesEdit(frozenset({"id", "color"}), True)]
    state = run(expanded("RemoveJsonAttributesResponseBody", fieldList=("id",)))
    assert state.body_edits == [JsonAttributesEdit(frozenset({"id"}), False)]


@pytest.mark.parametrize(("raw", "data"), [
    (b"0\r\n\r\n", b""),
    (b"3\r\nabc\r\n2;ext=1\r\nde\r\n0\r\nX-Trailer: 1\r\n\r\n", b"abcde"),
])
def test_buffered_dechunk(raw: bytes, data: bytes) -> None:
    assert dechunk(raw) == data


# -- SetRequestUriGatewayFilterFactoryTests ----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("template", "variables", "expected"),
    [
        ("https://example.com", {}, ("https://example.com", "/", "")),
        ("http://{sub}.example.com:8080/a?b=1", {"sub": "api"}, ("http://api.example.com:8080", "/a", "b=1")),
        ("example.com", {}, (None, "/orig", "")),  # not absolute: the route's uri stays
        ("http://{sub}:99999", {"sub": "h"}, (None, "/orig", "")),
    ],
)
def test_scg_set_request_uri(template: str, variables: dict[str, str],
                             expected: tuple[str | None, str, str]) -> None:
    state = run(expanded("SetRequestUri", template=template), "/orig", variables=variables)
    assert (state.request_url, state.path, state.query) == expected


@pytest.mark.parametrize(("spec", "reason"), [("Hystrix=fallbackcmd", "use CircuitBreaker"),
                                               ("JsonToGrpc=file:proto.pb, file:proto.proto, Svc, Method", "gRPC")])
def test_scg_filters_refused_with_a_reason(spec: str, reason: str) -> None:
    with pytest.raises(SpecError, match=reason):
        build_filter(Definition.shortcut(spec))


# -- SCG Server MVC's argument names (spring-cloud-gateway-server-mvc: BeforeFilterFunctions.addRequestHeader,
#    CircuitBreakerFilterFunctions.CircuitBreakerConfig) ----------------------------------------------------------
def test_scg_mvc_add_request_header_values() -> None:
    state = run(expanded("AddRequestHeader", name="X-Test", values=("a", "b")))
    assert ("X-Test", "a, b") in state.headers
    with pytest.raises(SpecError, match="not both"):
        build_filter(expanded("AddRequestHeader", name="X-Test", value="a", values="b"))


def test_scg_mvc_circuit_breaker_id_and_fallback_path() -> None:
    breaker = build_filter(expanded("CircuitBreaker", id="mycb", fallbackPath="/fallback", statusCodes="500"))
    assert "mycb" in breaker.describe() and "/fallback" in breaker.describe()
    with pytest.raises(SpecError, match="fallbackPath must be a path"):
        build_filter(expanded("CircuitBreaker", id="mycb", fallbackPath="GET,POST"))


# -- SpringCloudCircuitBreakerFilterFactory.shortcutFieldOrder() is [name] alone --------------------------------
def test_scg_circuit_breaker_shortcut_takes_only_the_name() -> None:
    assert "myCircuitBreaker" in build_filter(Definition.shortcut("CircuitBreaker=myCircuitBreaker")).describe()
    with pytest.raises(SpecError, match="shortcut form takes only its name"):
        build_filter(Definition.shortcut("CircuitBreaker=name=cb,fallbackUri=/fallback"))
