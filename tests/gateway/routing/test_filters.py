"""Gateway filters with SCG's semantics, table-driven from SCG's documentation and its filter tests."""

from __future__ import annotations

import pytest

from gateway.model import HeaderOp, RateLimit, RequestView
from gateway.routing.factory import Definition, SpecError
from gateway.routing.filters import PlanState, build_filter


def run(spec: str | Definition, path: str = "/", *, query: str = "", headers: tuple[tuple[str, str], ...] = (),
        variables: dict[str, str] | None = None) -> PlanState:
    """Apply one filter (shortcut text or Definition) to a request and return the plan state."""
    definition = Definition.shortcut(spec) if isinstance(spec, str) else spec
    request = RequestView("GET", path, query, headers)
    state = PlanState(request, path, query, list(headers), dict(variables or {}))
    build_filter(definition).apply(state)
    return state


@pytest.mark.parametrize(
    ("spec", "path", "expected"),
    [
        # SCG's RewritePathGatewayFilterFactoryTests.
        ("RewritePath=/foo, /baz", "/foo/bar", "/baz/bar"),
        ("RewritePath=/foo, /baz", "/foo/bar%20foobar", "/baz/bar%20foobar"),
        ("RewritePath=/foo/(?<id>\\d.*), /bar/baz/$\\{id}", "/foo/123", "/bar/baz/123"),
        # SCG's documentation: /red/blue -> /blue.
        ("RewritePath=/red/?(?<segment>.*), /$\\{segment}", "/red/blue", "/blue"),
        ("RewritePath=/red/?(?<segment>.*), /$\\{segment}", "/red", "/"),
        # The seed route (CONTRACT section 2).
        ("RewritePath=/ws-svc/(?<path>.*), /$\\{path}", "/ws-svc/websocket", "/websocket"),
        ("RewritePath=/ws-svc/(?<path>.*), /$\\{path}", "/ws-svc/", "/"),
        ("RewritePath=/ws-svc/(?<path>.*), /${path}", "/ws-svc/api/v1/push", "/api/v1/push"),
        # Numbered groups, and replaceAll: every occurrence.
        ("RewritePath=/(\\w+)/(\\w+), /$2/$1", "/a/b", "/b/a"),
        ("RewritePath=a, x", "/banana", "/bxnxnx"),
        # A literal '$' in the replacement.
        ("RewritePath=/price, /\\$usd", "/price", "/$usd"),
        # Encoded characters survive (the raw path is rewritten).
        ("RewritePath=/ws-svc/(?<path>.*), /$\\{path}", "/ws-svc/a%2Fb%3F", "/a%2Fb%3F"),
    ],
)
def test_filters_rewrite_path_scg_cases(spec: str, path: str, expected: str) -> None:
    assert run(spec, path).path == expected


def test_filters_rewrite_path_keeps_query_string() -> None:
    state = run("RewritePath=/foo, /baz", "/foo/bar", query="name=%E6%89%8E%E6%A0%B9")
    assert (state.path, state.query) == ("/baz/bar", "name=%E6%89%8E%E6%A0%B9")


@pytest.mark.parametrize(
    ("path", "parts", "expected"),
    [
        # SCG's StripPrefixGatewayFilterFactoryTests.
        ("/foo/bar", 1, "/bar"),
        ("/foo/bar", 2, "/"),
        ("/foo/bar", 0, "/foo/bar"),
        ("/foo/bar/", 2, "/"),
        ("/foo/bar/", 0, "/foo/bar/"),
        ("", 1, "/"),
        ("/", 1, "/"),
        ("/", 2, "/"),
        ("", 2, "/"),
        ("/this/is/a/long/path/with/a/lot/of/slashes", 4, "/path/with/a/lot/of/slashes"),
        # SCG's documentation: /name/blue/red -> /red with StripPrefix=2.
        ("/name/blue/red", 2, "/red"),
        ("/a/b/c/", 1, "/b/c/"),
    ],
)
def test_filters_strip_prefix_scg_cases(path: str, parts: int, expected: str) -> None:
    assert run(f"StripPrefix={parts}", path).path == expected


@pytest.mark.parametrize(
    ("spec", "path", "variables", "expected"),
    [
        ("PrefixPath=/mypath", "/hello", {}, "/mypath/hello"),
        ("PrefixPath=/{org}", "/x", {"org": "acme"}, "/acme/x"),
        # SCG's SetPathGatewayFilterFactoryTests.
        ("SetPath=/baz/bar", "/foo/bar", {}, "/baz/bar"),
        ("SetPath=/bar/baz/{id}", "/x", {"id": "123"}, "/bar/baz/123"),
        ("SetPath=/{org}/{scope}/function", "/x", {"org": "123", "scope": "abc"}, "/123/abc/function"),
        ("SetPath=/bar/baz/{id}", "/x", {"id": "12 3"}, "/bar/baz/12%203"),
        # SCG's documentation: Path=/red/{segment}, SetPath=/{segment}.
        ("SetPath=/{segment}", "/red/blue", {"segment": "blue"}, "/blue"),
    ],
)
def test_filters_prefix_and_set_path(spec: str, path: str, variables: dict[str, str], expected: str) -> None:
    assert run(spec, path, variables=variables).path == expected


@pytest.mark.parametrize(
    ("spec", "headers", "variables", "expected"),
    [
        ("AddRequestHeader=X-Request-red, blue", (), {}, [("X-Request-red", "blue")]),
        ("AddRequestHeader=X-Request-red, blue", (("x-request-red", "a"),), {},
         [("x-request-red", "a"), ("X-Request-red", "blue")]),
        ("AddRequestHeader=X-Request-Red, Blue-{segment}", (), {"segment": "7"}, [("X-Request-Red", "Blue-7")]),
        ("SetRequestHeader=X-Request-Red, Blue", (("X-Request-Red", "1"), ("X-Request-Red", "2"), ("A", "b")), {},
         [("A", "b"), ("X-Request-Red", "Blue")]),
        ("RemoveRequestHeader=X-Request-Foo", (("x-request-foo", "1"), ("Keep", "k")), {}, [("Keep", "k")]),
    ],
)
def test_filters_request_headers(spec: str, headers: tuple[tuple[str, str], ...], variables: dict[str, str],
                                 expected: list[tuple[str, str]]) -> None:
    assert run(spec, headers=headers, variables=variables).headers == expected


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("AddResponseHeader=X-Response-Red, Blue", HeaderOp("add", "X-Response-Red", "Blue")),
        ("SetResponseHeader=X-Response-Red, Blue", HeaderOp("set", "X-Response-Red", "Blue")),
        ("RemoveResponseHeader=X-Response-Foo", HeaderOp("remove", "X-Response-Foo")),
    ],
)
def test_filters_response_headers_become_ops(spec: str, expected: HeaderOp) -> None:
    assert run(spec).response_ops == [expected]


def test_filters_preserve_host_header_sets_flag() -> None:
    assert run("PreserveHostHeader").preserve_host is True


@pytest.mark.parametrize(
    ("definition", "expected"),
    [
        (Definition("RequestRateLimiter", (("redis-rate-limiter.replenishRate", "10"),
                                           ("redis-rate-limiter.burstCapacity", "20"),
                                           ("redis-rate-limiter.requestedTokens", "1"))),
         RateLimit(10, 20, 1, "principal")),  # SCG's default key resolver: the principal name
        # SCG's `status-code` and `empty-key-status-code` (RequestRateLimiterGatewayFilterFactoryTests).
        (Definition("RequestRateLimiter", (("redis-rate-limiter.replenishRate", "1"), ("status-code", "BAD_REQUEST"),
                                           ("empty-key-status-code", "423"))),
         RateLimit(1, 1, 1, "principal", status_code=400, empty_key_status=423)),
        (Definition("RequestRateLimiter", (("redis-rate-limiter.replenishRate", "1"),
                                           ("redis-rate-limiter.burstCapacity", "60"),
                                           ("redis-rate-limiter.requestedTokens", "60"),
                                           ("key-resolver", "#{@userKeyResolver}"))),
         RateLimit(1, 60, 60, "principal")),
        (Definition("RequestRateLimiter", (("redis-rate-limiter.replenishRate", "5"),
                                           ("key-resolver", "#{@ipKeyResolver}"), ("deny-empty-key", "false"))),
         RateLimit(5, 5, 1, "client", deny_empty_key=False)),
        (Definition("RequestRateLimiter", (("replenishRate", "5"), ("burstCapacity", "10"),
                                           ("key", "header:X-User"))),
         RateLimit(5, 10, 1, "header:X-User")),
        (Definition.shortcut("RequestRateLimiter=2, 4, 1, header:X-Api-Key"), RateLimit(2, 4, 1, "header:X-Api-Key")),
        (Definition.shortcut("RequestRateLimiter=2, 4"), RateLimit(2, 4, 1, "principal")),
    ],
)
def test_filters_request_rate_limiter_args(definition: Definition, expected: RateLimit) -> None:
    assert run(definition).rate_limits == [expected]


@pytest.mark.parametrize(
    ("spec", "key"),
    [
        ("RewritePath=/(?<x, /", "regexp"),
        ("RewritePath=/foo, /${nope}", "replacement"),
        ("RewritePath=/foo, /$9", "replacement"),
        ("StripPrefix=-1", "parts"),
        ("StripPrefix=two", "parts"),
        ("PrefixPath=relative", "prefix"),
        ("SetPath=relative", "template"),
        ("AddRequestHeader=Bad Name, x", "name"),
        ("RequestRateLimiter=10, 5", "redis-rate-limiter.burstCapacity"),
        ("RequestRateLimiter=10, 20, 1, #{@nosuchResolver}", "key-resolver"),
        ("RequestRateLimiter=0", "redis-rate-limiter.replenishRate"),
    ],
)
def test_filters_refuse_bad_arguments(spec: str, key: str) -> None:
    with pytest.raises(SpecError) as caught:
        build_filter(Definition.shortcut(spec))
    assert caught.value.key == key


def test_filters_unknown_name_is_refused() -> None:
    with pytest.raises(SpecError, match="unknown filter 'ValidateCodeFilter'"):
        build_filter(Definition.shortcut("ValidateCodeFilter=x"))


def test_filters_expanded_notation_equals_shortcut() -> None:
    expanded = Definition("RewritePath", (("regexp", "/red/?(?<segment>.*)"), ("replacement", "/$\\{segment}")))
    genkey = Definition("RewritePath", (("_genkey_0", "/red/?(?<segment>.*)"), ("_genkey_1", "/$\\{segment}")))
    assert run(expanded, "/red/x").path == run(genkey, "/red/x").path == "/x"


@pytest.mark.parametrize(
    ("spec", "text"),
    [
        ("RewritePath=/ws-svc/(?<path>.*), /$\\{path}", "[RewritePath /ws-svc/(?<path>.*) = '/${path}']"),
        ("StripPrefix=1", "[StripPrefix parts = 1]"),
        ("PrefixPath=/httpbin", "[PrefixPath prefix = '/httpbin']"),
        ("AddRequestHeader=X-Request-Foo, Bar", "[AddRequestHeader X-Request-Foo = 'Bar']"),
        ("AddResponseHeader=X-Response-Default-Foo, Default-Bar",
         "[AddResponseHeader X-Response-Default-Foo = 'Default-Bar']"),
        ("SetPath=/{segment}", "[SetPath template = '/{segment}']"),
        ("PreserveHostHeader", "[PreserveHostHeader]"),
    ],
)
def test_filters_describe_like_scg_actuator(spec: str, text: str) -> None:
    assert build_filter(Definition.shortcut(spec)).describe() == text
