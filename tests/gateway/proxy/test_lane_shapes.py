"""gateway/proxy/lane_shapes.py: which routes may have shapes, and what a shape sends for a path (pure)."""

from __future__ import annotations

import pytest

from gateway.config.model import RouteSpec
from gateway.proxy.lane_shapes import Shape, literal_prefix, make_shape, shape_prefixes, split_path
from gateway.routing.factory import Definition
from gateway.routing.filters import GatewayFilter, build_filter
from tests.gateway.conftest import route


@pytest.fixture
def http_lane() -> None:
    """Pure: no gateway, so no lane."""
    return None


@pytest.mark.parametrize(("pattern", "prefix"), [
    ("/api/**", "/api"),
    ("/api/v1/**", "/api/v1"),
    ("/**", ""),
    ("/api/*/x/**", None),      # a wildcard before /**
    ("/api/{id}/**", None),     # a variable
    ("/a?c/**", None),
    ("/api/%20/**", None),      # compared decoded: not literal as written
    ("/api/{*rest}", None),
    ("/api/x", None),           # no trailing /**
    ("api/**", None),
])
def test_literal_prefix(pattern: str, prefix: str | None) -> None:
    assert literal_prefix(pattern) == prefix


U = "http://127.0.0.1:1"


@pytest.mark.parametrize(("routes", "expected"), [
    ([route("a", U, ["Path=/api/**"])], {"a": ("/api",)}),
    ([route("a", U, ["Path=/api/**", "Method=GET", "Header=X-A, 1", "Host=**.example.org", "Query=x",
                     "Cookie=c, v", "RemoteAddr=10.0.0.0/8"])], {"a": ("/api",)}),
    # An earlier route whose patterns all differ from /api in a literal segment: /api keeps its shape.
    ([route("o", U, ["Path=/other/**,/v1/x"]), route("a", U, ["Path=/api/**"])],
     {"o": ("/other",), "a": ("/api",)}),
    # An earlier route that may match under /api (a longer literal prefix, a wildcard, a variable): no shape.
    ([route("s", U, ["Path=/api/special/**"]), route("a", U, ["Path=/api/**,/v2/**"])],
     {"s": ("/api/special",), "a": ("/v2",)}),
    ([route("w", U, ["Path=/*/x"]), route("a", U, ["Path=/api/**"])], {}),
    ([route("v", U, ["Path=/{seg}/**"]), route("a", U, ["Path=/api/**"])], {}),
    ([route("r", U, ["Path=/**", "Header=X-Beta"]), route("a", U, ["Path=/api/**"])], {"r": ("",)}),
    # An earlier route that does not read the path fails for every path when it failed for one.
    ([route("h", U, ["Header=X-Beta"]), route("a", U, ["Path=/api/**"])], {"a": ("/api",)}),
    # Predicates that read the path other than through one Path predicate, or the clock: no shape.
    ([route("a", U, ["Path=/api/**", "Path=/api/x/**"])], {}),
    ([route("a", U, ["After=2020-01-01T00:00:00Z[UTC]", "Path=/api/**"])], {}),
    ([route("a", U, ["Method=GET"])], {}),
])
def test_shape_prefixes(routes: list[RouteSpec], expected: dict[str, tuple[str, ...]]) -> None:
    assert shape_prefixes(routes) == expected


@pytest.mark.parametrize(("raw", "expected"), [
    (b"GET /a/b HTTP/1.1\r\nHost: x", (b"GET  HTTP/1.1\r\nHost: x", b"/a/b")),
    (b"GET /a/b?q=1 HTTP/1.1\r\nHost: x", (b"GET ?q=1 HTTP/1.1\r\nHost: x", b"/a/b")),
    (b"GET /a/b?q=1 HTTP/1.1", (b"GET ?q=1 HTTP/1.1", b"/a/b")),
    # No version on the request line: a "path" with a CR in it, which no shape takes (test_shape_request).
    (b"GET /a/b\r\nHost: x y", (b"GET  x y", b"/a/b\r\nHost:")),
    (b"GET", None),
])
def test_split_path(raw: bytes, expected: tuple[bytes, bytes] | None) -> None:
    assert split_path(raw) == expected


def filters(*shortcuts: str) -> list[GatewayFilter]:
    return [build_filter(Definition.shortcut(s)) for s in shortcuts]


REQUEST = b"GET /item/1 HTTP/1.1\r\nHost: up\r\nX-Forwarded-Prefix: /api\r\n\r\n"


@pytest.mark.parametrize(("chain", "path", "sent", "made"), [
    (filters("StripPrefix=1"), "/api/item/1", REQUEST, True),
    (filters("StripPrefix=1", "AddRequestHeader=X-A, b", "PreserveHostHeader"), "/api/item/1", REQUEST, True),
    (filters("StripPrefix=1", "RequestRateLimiter=1, 2, 1, header:X-Key"), "/api/item/1", REQUEST, True),
    (filters("StripPrefix=2"), "/api/item/1", REQUEST, False),          # strips more than the prefix
    (filters("StripPrefix=1", "AddRequestHeader=X-A, {id}"), "/api/item/1", REQUEST, False),
    (filters("SetPath=/item/1"), "/api/item/1", REQUEST, False),
    (filters("RewritePath=/api/(?<r>.*), /${r}"), "/api/item/1", REQUEST, False),
    (filters("StripPrefix=1"), "/api/item/1", REQUEST.replace(b"/item/1", b"/item/9"), False),  # not rebuilt
    (filters("StripPrefix=1"), "/api/item%2F1", REQUEST, False),         # not a plain path
    (filters("StripPrefix=1"), "/other/item/1", REQUEST, False),         # not under the prefix
])
def test_make_shape(chain: list[GatewayFilter], path: str, sent: bytes, made: bool) -> None:
    shape = make_shape(("/api",), chain, "GET", path, sent)
    assert (shape is not None) == made


SHAPE = Shape(b"/api/", b"GET ", b"/", b"?q=1 HTTP/1.1\r\nHost: up\r\n\r\n")


@pytest.mark.parametrize(("path", "expected"), [
    (b"/api/x", b"GET /x?q=1 HTTP/1.1\r\nHost: up\r\n\r\n"),
    (b"/api/x/y/", b"GET /x/y/?q=1 HTTP/1.1\r\nHost: up\r\n\r\n"),
    (b"/api/a.b/c~d/e-f_g/h!$&'()*+,=:@", b"GET /a.b/c~d/e-f_g/h!$&'()*+,=:@?q=1 HTTP/1.1\r\nHost: up\r\n\r\n"),
    (b"/api/", None), (b"/api", None), (b"/apix/y", None), (b"/other/x", None),
    (b"/api/a%2Fb", None), (b"/api/a;x=1", None), (b"/api/a//b", None), (b"/api//a", None),
    (b"/api/..", None), (b"/api/a/../b", None), (b"/api/./a", None), (b"/api/a/.", None), (b"/api/a..b", None),
    (b"/api/a\\b", None), (b"/api/a b", None), (b"/api/a\r\nHost:", None),
])
def test_shape_request(path: bytes, expected: bytes | None) -> None:
    assert SHAPE.request(path) == expected


def test_a_root_shape_leaves_the_actuator_alone() -> None:
    root = Shape(b"/", b"GET ", b"/", b" HTTP/1.1\r\n\r\n")
    assert root.request(b"/x") == b"GET /x HTTP/1.1\r\n\r\n"
    assert root.request(b"/actuator") is None and root.request(b"/actuator/health") is None
    assert root.request(b"/actuators") == b"GET /actuators HTTP/1.1\r\n\r\n"
