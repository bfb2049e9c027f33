"""Hop-by-hop removal and X-Forwarded-* (pure)."""

from __future__ import annotations

import pytest

from gateway.model import Headers
from gateway.proxy.headers import (
    add_forwarded,
    authority,
    connection_tokens,
    forwarded_port,
    strip_hop_by_hop,
    upstream_request_headers,
)


def names(headers: Headers) -> list[str]:
    return [k.lower() for k, _ in headers]


def test_strip_hop_by_hop_removes_standard_and_connection_named_headers() -> None:
    headers: Headers = (("Host", "a"), ("Connection", "keep-alive, X-Private"), ("Keep-Alive", "timeout=5"),
                        ("X-Private", "1"), ("TE", "trailers"), ("Proxy-Authorization", "x"), ("Accept", "*/*"))
    assert names(strip_hop_by_hop(headers)) == ["host", "accept"]


def test_strip_hop_by_hop_keeps_transfer_encoding_for_verbatim_bodies() -> None:
    headers: Headers = (("Transfer-Encoding", "chunked"),)
    assert strip_hop_by_hop(headers) == headers


def test_strip_hop_by_hop_keeps_websocket_upgrade() -> None:
    headers: Headers = (("Host", "a"), ("Connection", "keep-alive, Upgrade"), ("Upgrade", "websocket"),
                        ("Sec-WebSocket-Key", "k"), ("Sec-WebSocket-Protocol", "chat"),
                        ("Sec-WebSocket-Extensions", "permessage-deflate"))
    result = strip_hop_by_hop(headers, upgrade=True)
    assert ("Upgrade", "websocket") in result
    assert ("Connection", "Upgrade") in result
    assert names(result).count("connection") == 1
    assert {"sec-websocket-key", "sec-websocket-protocol", "sec-websocket-extensions"} <= set(names(result))


def test_strip_without_upgrade_drops_upgrade() -> None:
    headers: Headers = (("Connection", "Upgrade"), ("Upgrade", "h2c"))
    assert strip_hop_by_hop(headers) == ()


def test_connection_tokens_are_lowercased_and_merged() -> None:
    assert connection_tokens((("Connection", "Keep-Alive, Upgrade"), ("connection", "X-A"))) == {
        "keep-alive", "upgrade", "x-a"}


@pytest.mark.parametrize(("host", "proto", "port"), [
    ("example.com", "http", 80),
    ("example.com", "https", 443),
    ("example.com:8080", "http", 8080),
    ("[::1]:9000", "http", 9000),
    ("[::1]", "https", 443),
    ("", "http", 80),
])
def test_forwarded_port_from_host_or_scheme_default(host: str, proto: str, port: int) -> None:
    assert forwarded_port(host, proto) == port


def test_add_forwarded_adds_every_header() -> None:
    result = dict(add_forwarded((("Host", "gw:8080"),), client_addr="192.0.2.1", proto="http", host="gw:8080",
                                prefix="/ws-svc"))
    assert result["X-Forwarded-For"] == "192.0.2.1"
    assert result["X-Forwarded-Proto"] == "http"
    assert result["X-Forwarded-Host"] == "gw:8080"
    assert result["X-Forwarded-Port"] == "8080"
    assert result["X-Forwarded-Prefix"] == "/ws-svc"


def test_add_forwarded_appends_to_existing_values() -> None:
    result = dict(add_forwarded((("x-forwarded-for", "10.0.0.1"),), client_addr="192.0.2.1", proto="https",
                                host="h"))
    assert result["x-forwarded-for"] == "10.0.0.1, 192.0.2.1"
    assert "X-Forwarded-Prefix" not in result


@pytest.mark.parametrize(("host", "port", "scheme", "expected"), [
    ("10.0.0.1", 80, "http", "10.0.0.1"),
    ("10.0.0.1", 8080, "http", "10.0.0.1:8080"),
    ("svc", 443, "https", "svc"),
    ("::1", 8080, "http", "[::1]:8080"),
])
def test_authority_leaves_out_default_ports(host: str, port: int, scheme: str, expected: str) -> None:
    assert authority(host, port, scheme) == expected


def test_upstream_request_headers_rewrites_host_unless_preserved() -> None:
    headers: Headers = (("Host", "gw.example"), ("Accept", "*/*"))
    rewritten = upstream_request_headers(headers, upgrade=False, client_addr="c", proto="http", prefix="",
                                         preserve_host=False, upstream_authority="10.0.0.1:9000")
    assert rewritten[0] == ("Host", "10.0.0.1:9000")
    assert dict(rewritten)["X-Forwarded-Host"] == "gw.example"
    preserved = upstream_request_headers(headers, upgrade=False, client_addr="c", proto="http", prefix="",
                                         preserve_host=True, upstream_authority="10.0.0.1:9000")
    assert dict(preserved)["Host"] == "gw.example"


@pytest.mark.parametrize("upgrade", [True, False])
@pytest.mark.parametrize("preserve_host", [True, False])
def test_upstream_request_headers_equals_strip_then_forward(upgrade: bool, preserve_host: bool) -> None:
    headers: Headers = (("Host", "gw:8080"), ("Connection", "Upgrade, X-Hop"), ("Upgrade", "websocket"),
                        ("X-Hop", "1"), ("Keep-Alive", "5"), ("Sec-WebSocket-Key", "k"),
                        ("Transfer-Encoding", "chunked"), ("X-Forwarded-For", "10.0.0.1"), ("Accept", "*/*"))
    fast = upstream_request_headers(headers, upgrade=upgrade, client_addr="c", proto="http", prefix="/p",
                                    preserve_host=preserve_host, upstream_authority="up:1")
    slow = add_forwarded(strip_hop_by_hop(headers, upgrade=upgrade), client_addr="c", proto="http", host="gw:8080",
                         prefix="/p")
    if not preserve_host:
        slow = (("Host", "up:1"), *((k, v) for k, v in slow if k.lower() != "host"))
    assert sorted(fast) == sorted(slow)


def test_upstream_request_headers_drops_a_second_host() -> None:
    result = upstream_request_headers((("Host", "a"), ("Host", "b")), upgrade=False, client_addr="c", proto="http",
                                      prefix="", preserve_host=True, upstream_authority="up:1")
    assert [v for k, v in result if k == "Host"] == ["a"]
