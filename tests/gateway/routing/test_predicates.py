"""Route predicates with SCG's semantics, table-driven from SCG's documentation."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from gateway.model import RequestView
from gateway.routing.factory import Definition, SpecError
from gateway.routing.predicates import MatchContext, build_predicate, parse_zoned_datetime

NOW = datetime(2017, 1, 21, 12, 0, tzinfo=UTC)
AFTER = "2017-01-20T17:42:47.789-07:00[America/Denver]"
LATER = "2017-01-21T17:42:47.789-07:00[America/Denver]"


def ctx_for(method: str = "GET", path: str = "/", query: str = "", headers: tuple[tuple[str, str], ...] = (),
            remote: str = "127.0.0.1", now: datetime = NOW) -> MatchContext:
    return MatchContext(RequestView(method, path, query, headers, remote), now, lambda group: None)


@pytest.mark.parametrize(
    ("spec", "ctx", "expected"),
    [
        ("After=" + AFTER, ctx_for(), True),
        ("After=" + AFTER, ctx_for(now=datetime(2017, 1, 20, tzinfo=UTC)), False),
        ("Before=" + AFTER, ctx_for(), False),
        ("Before=" + AFTER, ctx_for(now=datetime(2017, 1, 20, tzinfo=UTC)), True),
        (f"Between={AFTER}, {LATER}", ctx_for(), True),
        (f"Between={AFTER}, {LATER}", ctx_for(now=datetime(2017, 1, 23, tzinfo=UTC)), False),
        ("After=1484959367789", ctx_for(), True),  # epoch milliseconds, as SCG accepts
        ("Cookie=chocolate, ch.p", ctx_for(headers=(("Cookie", "a=1; chocolate=chip"),)), True),
        ("Cookie=chocolate, ch.p", ctx_for(headers=(("Cookie", "chocolate=chocolate"),)), False),
        ("Cookie=chocolate, ch.p", ctx_for(), False),
        ("Header=X-Request-Id, \\d+", ctx_for(headers=(("x-request-id", "123"),)), True),
        ("Header=X-Request-Id, \\d+", ctx_for(headers=(("X-Request-Id", "12a"),)), False),
        ("Header=X-Request-Id", ctx_for(headers=(("X-Request-Id", ""),)), True),
        ("Host=**.somehost.org,**.anotherhost.org", ctx_for(headers=(("Host", "www.somehost.org"),)), True),
        ("Host=**.somehost.org,**.anotherhost.org", ctx_for(headers=(("Host", "beta.somehost.org"),)), True),
        ("Host=**.somehost.org,**.anotherhost.org", ctx_for(headers=(("Host", "www.anotherhost.org:8080"),)), True),
        ("Host=**.somehost.org", ctx_for(headers=(("Host", "somehost.com"),)), False),
        ("Method=GET,POST", ctx_for("POST"), True),
        ("Method=GET,POST", ctx_for("PUT"), False),
        ("Path=/red/{segment},/blue/{segment}", ctx_for(path="/red/1"), True),
        ("Path=/red/{segment},/blue/{segment}", ctx_for(path="/blue/green"), True),
        ("Path=/red/{segment},/blue/{segment}", ctx_for(path="/green/1"), False),
        ("Path=/red/{segment},false", ctx_for(path="/red/1/"), False),
        ("Path=/red/{segment}", ctx_for(path="/red/1/"), True),
        ("Query=green", ctx_for(query="green=1"), True),
        ("Query=green", ctx_for(query="red=1"), False),
        ("Query=red, gree.", ctx_for(query="red=greet"), True),
        ("Query=red, gree.", ctx_for(query="red=green&red=x"), True),
        ("Query=red, gree.", ctx_for(query="red=gree"), False),
        ("RemoteAddr=192.168.1.1/24", ctx_for(remote="192.168.1.10"), True),
        ("RemoteAddr=192.168.1.1/24", ctx_for(remote="192.168.2.10"), False),
        ("RemoteAddr=10.0.0.1, ::1", ctx_for(remote="::1"), True),
        ("RemoteAddr=192.168.1.1/24", ctx_for(remote="::ffff:192.168.1.7"), True),
        ("RemoteAddr=192.168.1.1/24", ctx_for(remote="not-an-ip"), False),
    ],
)
def test_predicates_scg_documented_cases(spec: str, ctx: MatchContext, expected: bool) -> None:
    assert build_predicate(Definition.shortcut(spec)).test(ctx) is expected


@pytest.mark.parametrize(
    ("spec", "path", "host", "variables"),
    [
        ("Path=/red/{segment}", "/red/blue", "", {"segment": "blue"}),
        ("Path=/files/{*rest}", "/files/a/b", "", {"rest": "/a/b"}),
        ("Host={sub}.myhost.org", "/", "www.myhost.org", {"sub": "www"}),
    ],
)
def test_predicates_record_uri_template_variables(spec: str, path: str, host: str,
                                                  variables: dict[str, str]) -> None:
    ctx = ctx_for(path=path, headers=(("Host", host),))
    assert build_predicate(Definition.shortcut(spec)).test(ctx)
    assert ctx.variables == variables


@pytest.mark.parametrize(
    ("definition", "text"),
    [
        (Definition.shortcut("Path=/headers"), "Paths: [/headers], match trailing slash: true"),
        (Definition.shortcut("Host=**.addrequestheader.org"), "Hosts: [**.addrequestheader.org]"),
        (Definition("Path", (("patterns", ("/a", "/b")), ("matchTrailingSlash", "false"))),
         "Paths: [/a, /b], match trailing slash: false"),
        (Definition("Path", (("_genkey_0", "/a"), ("_genkey_1", "/b"))), "Paths: [/a, /b], match trailing slash: true"),
        (Definition.shortcut("Method=GET"), "Methods: [GET]"),
        (Definition.shortcut("Weight=group1, 8"), "Weight: group1 8"),
    ],
)
def test_predicates_describe_like_scg_actuator(definition: Definition, text: str) -> None:
    assert build_predicate(definition).describe() == text


@pytest.mark.parametrize(
    ("spec", "key"),
    [
        ("Path=/a/**/b", "patterns"),
        ("Path=/a, maybe", None),  # 'maybe' is a second pattern, fine; checked below
        ("Header=X-Id, [", "regexp"),
        ("After=yesterday", "datetime"),
        ("After=2017-01-20T17:42:47", "datetime"),
        ("After=2017-01-20T17:42:47[Mars/Olympus]", "datetime"),
        (f"Between={LATER}, {AFTER}", "datetime2"),
        ("RemoteAddr=300.1.1.1", "sources"),
        ("Weight=group1, -1", "weight"),
        ("Weight=group1", "weight"),
        ("Method=G E T", "methods"),
        ("Cookie=", "name"),
    ],
)
def test_predicates_refuse_bad_arguments(spec: str, key: str | None) -> None:
    if key is None:
        assert build_predicate(Definition.shortcut(spec)).test(ctx_for(path="/a"))
        return
    with pytest.raises(SpecError) as caught:
        build_predicate(Definition.shortcut(spec))
    assert caught.value.key == key


def test_predicates_unknown_name_is_refused() -> None:
    with pytest.raises(SpecError, match="unknown predicate 'Paht'"):
        build_predicate(Definition.shortcut("Paht=/x"))


def test_predicates_zoned_datetime_keeps_offset_and_zone() -> None:
    moment = parse_zoned_datetime(AFTER)
    assert moment.utcoffset() == timedelta(hours=-7)
    assert parse_zoned_datetime("2017-01-20T17:42:47[America/Denver]").utcoffset() == timedelta(hours=-7)
