"""The handshake fast paths give what the general code gives: head parsing, header building, route match and plan."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.config.model import GatewayConfig, RouteSpec, parse_upstream
from gateway.errors import BadRequest
from gateway.model import Headers, RequestView
from gateway.ops.metrics import Metrics
from gateway.proxy.headers import add_forwarded, strip_hop_by_hop, upstream_request_headers
from gateway.proxy.httpparse import parse_request_head, parse_response_head
from gateway.routing.factory import Definition
from gateway.routing.filters import build_filter
from gateway.routing.predicates import MatchContext, build_predicate
from gateway.routing.table import RouteMatch, RouteTable

_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_VALUE_BAD = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")


def reference_request_head(data: bytes) -> tuple[str, str, str, Headers]:
    """The line-by-line reading of a request head (RFC 9112), without any fast path."""
    first, _, block = data.partition(b"\r\n")
    parts = first.split(b" ")
    if len(parts) != 3:
        raise BadRequest("malformed request line")
    method, target, version = parts
    if (not _TOKEN.fullmatch(method) or not re.fullmatch(rb"/[\x21-\x7e\x80-\xff]*", target)
            or version not in (b"HTTP/1.0", b"HTTP/1.1")):
        raise BadRequest("malformed request line")
    headers: list[tuple[str, str]] = []
    for line in block.split(b"\r\n") if block else []:
        name, sep, value = line.partition(b":")
        value = value.strip(b" \t")
        if not sep or not _TOKEN.fullmatch(name) or _VALUE_BAD.search(value):
            raise BadRequest("malformed header line")
        headers.append((name.decode("latin-1"), value.decode("latin-1")))
    return method.decode(), target.decode("latin-1"), version.decode(), tuple(headers)


_PIECES = st.sampled_from([b"GET", b" ", b"/", b"/a?b=1", b"HTTP/1.1", b"HTTP/1.0", b"\r\n", b"Host", b":",
                           b" x ", b"\t", b"\x00", b"\x7f", b"\xe9", b"\r", b"\n", b"@", b"X-A", b"  "])


@settings(max_examples=3000, deadline=None)
@given(st.lists(_PIECES, max_size=14))
def test_parse_request_head_agrees_with_the_line_by_line_reading(pieces: list[bytes]) -> None:
    data = b"".join(pieces)
    try:
        expected: tuple[str, str, str, Headers] | None = reference_request_head(data)
    except BadRequest:
        expected = None
    try:
        head = parse_request_head(data)
    except BadRequest:
        assert expected is None
        return
    assert (head.method, head.target, head.version, head.headers) == expected


def test_parse_request_head_reads_a_websocket_handshake() -> None:
    head = parse_request_head(b"GET /echo/x?v=1 HTTP/1.1\r\nHost: gw:8080\r\nUpgrade: websocket\r\n"
                              b"Connection: Upgrade\r\nSec-WebSocket-Key:\tabc== \r\nSec-WebSocket-Version: 13")
    assert (head.method, head.path, head.query, head.version) == ("GET", "/echo/x", "v=1", "HTTP/1.1")
    assert head.headers[3] == ("Sec-WebSocket-Key", "abc==")


def test_parse_response_head_reason_may_hold_spaces_and_be_missing() -> None:
    head = parse_response_head(b"HTTP/1.1 101 Switching  Protocols\r\nUpgrade: websocket")
    assert (head.status, head.reason, head.headers) == (101, "Switching  Protocols", (("Upgrade", "websocket"),))
    assert parse_response_head(b"HTTP/1.0 200").reason == ""


_NAMES = st.sampled_from(["Host", "host", "Connection", "Upgrade", "X-Forwarded-For", "x-forwarded-host",
                          "X-Forwarded-Port", "X-Forwarded-Prefix", "Keep-Alive", "TE", "Transfer-Encoding", "X-A"])
_VALUES = st.sampled_from(["", "a", "gw:8080", "[::1]:9", "Upgrade", "keep-alive, X-A", "close", "x-forwarded-for",
                           "websocket", "chunked", "host"])


def reference_upstream_headers(headers: Headers, *, upgrade: bool, prefix: str, preserve_host: bool) -> Headers:
    """Hop-by-hop headers out (Upgrade kept for an upgrade), a second Host dropped, X-Forwarded-* added, Host set."""
    kept: list[tuple[str, str]] = []
    original_host = ""
    seen_host = False
    for key, value in strip_hop_by_hop(headers, upgrade=upgrade):
        if key.lower() == "host":
            if seen_host:
                continue
            seen_host = True
            original_host = value
            if not preserve_host or not value:
                continue
        kept.append((key, value))
    result = add_forwarded(tuple(kept), client_addr="c", proto="http", host=original_host, prefix=prefix)
    return result if preserve_host and original_host else (("Host", "up:1"), *result)


@settings(max_examples=2000, deadline=None)
@given(st.lists(st.tuples(_NAMES, _VALUES), max_size=7), st.booleans(), st.booleans(), st.sampled_from(["", "/p"]))
def test_upstream_request_headers_equals_the_steps_one_by_one(fields: list[tuple[str, str]], upgrade: bool,
                                                              preserve_host: bool, prefix: str) -> None:
    headers = tuple(fields)
    fast = upstream_request_headers(headers, upgrade=upgrade, client_addr="c", proto="http", prefix=prefix,
                                    preserve_host=preserve_host, upstream_authority="up:1")
    slow = reference_upstream_headers(headers, upgrade=upgrade, prefix=prefix, preserve_host=preserve_host)
    assert fast == slow
    if not preserve_host:
        assert [v for k, v in fast if k.lower() == "host"] == ["up:1"]


def spec(route_id: str, predicates: list[str], filters: list[str] | None = None) -> RouteSpec:
    return RouteSpec(route_id, parse_upstream("http://localhost:9000"), 0,
                     predicates=tuple(build_predicate(Definition.shortcut(p)) for p in predicates),
                     filters=tuple(build_filter(Definition.shortcut(f)) for f in filters or []))


def test_plan_without_filters_equals_the_general_path() -> None:
    route = spec("r", ["Path=/a/{x}/**"])
    routes = RouteTable(GatewayConfig(routes=(route,)))
    for raw_path, query in [("/a/b/c", ""), ("/a/%7Bx%7D/c", "q=1"), ("/a/b/c%20d", "")]:
        request = RequestView("GET", raw_path, query, (("Host", "gw"), ("Upgrade", "websocket")))
        match = routes.match(request)
        assert match is not None
        general = RouteMatch(match.route, match.variables, (), None)  # the filter path with an empty chain
        assert match.plan(request) == general.plan(request)


def test_match_variables_do_not_leak_between_requests_or_routes() -> None:
    routes = RouteTable(GatewayConfig(routes=(spec("v", ["Path=/v/{x}", "Method=POST"]), spec("any", ["Path=/**"]))))
    first = routes.match(RequestView("GET", "/v/one"))  # Path of "v" captured x, then Method failed
    assert first is not None and first.route.id == "any" and dict(first.variables) == {}
    second = routes.match(RequestView("POST", "/v/two"))
    assert second is not None and dict(second.variables) == {"x": "two"}
    third = routes.match(RequestView("GET", "/other"))
    assert third is not None and dict(third.variables) == {}


def test_match_context_reads_the_clock_only_when_asked() -> None:
    ctx = MatchContext(RequestView("GET", "/"))
    before = datetime.now(UTC)
    assert before <= ctx.now <= datetime.now(UTC)
    assert ctx.now is ctx.now  # one moment for the whole match
    after = RouteTable(GatewayConfig(routes=(spec("t", ["After=2017-01-20T17:42:47.789-07:00[America/Denver]"]),)))
    assert after.match(RequestView("GET", "/")) is not None


def test_metrics_add_series_counts_the_same_series_as_add() -> None:
    metrics = Metrics()
    metrics.add("wsgate_requests_total", 1, route="r", status="101")
    metrics.add_series(metrics.series("wsgate_requests_total", route="r", status="101"))
    assert metrics.value("wsgate_requests_total", route="r", status="101") == 2.0


def test_metrics_series_render_once_added_to_even_by_zero_or_below_zero() -> None:
    metrics = Metrics()
    never, zero, below = (metrics.series("wsgate_active_tunnels", route=r) for r in ("never", "zero", "below"))
    zero.value += 0
    below.value -= 1
    text = metrics.render()
    assert 'route="never"' not in text
    assert 'wsgate_active_tunnels{route="zero"} 0' in text
    assert 'wsgate_active_tunnels{route="below"} -1' in text
    assert never is metrics.series("wsgate_active_tunnels", route="never")  # one key per series


@pytest.mark.parametrize("preserve_host", [True, False])
def test_upstream_headers_send_one_host_when_the_client_sent_an_empty_one(preserve_host: bool) -> None:
    headers = upstream_request_headers((("Host", ""), ("Host", "second"), ("Accept", "*/*")), upgrade=False,
                                       client_addr="c", proto="http", prefix="", preserve_host=preserve_host,
                                       upstream_authority="up:1")
    assert [v for k, v in headers if k.lower() == "host"] == ["up:1"]
