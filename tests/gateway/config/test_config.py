"""The configuration values: validation at construction and the small parsers the loader uses."""

from __future__ import annotations

from types import MappingProxyType

import pytest

from gateway.config.model import (
    ConsulSettings,
    GatewayConfig,
    LoadBalancerSettings,
    RouteSpec,
    ServerSettings,
    format_upstream,
    parse_balancer_choice,
    parse_upstream,
)
from gateway.config.nodes import parse_duration_s
from gateway.model import BalancerChoice, Balancing, Upstream


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("lb://ws-service", Upstream("http", service="ws-service")),
        ("lb:ws://ws-service", Upstream("ws", service="ws-service")),
        ("lb:http://svc", Upstream("http", service="svc")),
        ("lb:wss://svc", Upstream("wss", service="svc")),
        ("http://localhost:8081", Upstream("http", "localhost", 8081)),
        ("ws://127.0.0.1", Upstream("ws", "127.0.0.1", 80)),
        ("https://example.org", Upstream("https", "example.org", 443)),
        ("wss://[::1]:9443/ignored/path", Upstream("wss", "::1", 9443)),
        # SCG's forward: scheme (CONTRACT 2b): the gateway's own handlers, with the uri's path.
        ("forward:/fallback", Upstream("forward", forward_path="/fallback")),
        ("forward:///globalfilters", Upstream("forward", forward_path="/globalfilters")),
    ],
)
def test_config_parse_upstream_forms(text: str, expected: Upstream) -> None:
    assert parse_upstream(text) == expected


@pytest.mark.parametrize(
    "text", ["lb:", "lb://", "lb:ftp://svc", "lb://bad name", "http://", "http://h:99999", "tcp://h:1"]
)
def test_config_parse_upstream_refuses(text: str) -> None:
    with pytest.raises(ValueError):
        parse_upstream(text)


@pytest.mark.parametrize(
    "text", ["lb://ws-service", "lb:ws://ws-service", "http://localhost:8081", "wss://[::1]:9443"]
)
def test_config_format_upstream_round_trips(text: str) -> None:
    assert format_upstream(parse_upstream(text)) == text


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("127.0.0.1:8500", ConsulSettings("127.0.0.1", 8500, "http")),
        ("consul.local", ConsulSettings("consul.local", 8500, "http")),
        ("http://10.0.0.2:8501", ConsulSettings("10.0.0.2", 8501, "http")),
        ("https://consul.example", ConsulSettings("consul.example", 443, "https")),
        ("[::1]:8500", ConsulSettings("::1", 8500, "http")),
    ],
)
def test_config_consul_from_address(address: str, expected: ConsulSettings) -> None:
    assert ConsulSettings.from_address(address) == expected


@pytest.mark.parametrize("address", ["", "http://", "host:notaport", "ftp://h:1", "http://h:1/path"])
def test_config_consul_from_address_refuses(address: str) -> None:
    with pytest.raises(ValueError):
        ConsulSettings.from_address(address)


@pytest.mark.parametrize(
    ("text", "hash_on", "expected"),
    [
        ("round-robin", None, BalancerChoice()),
        ("least-connections", None, BalancerChoice(Balancing.LEAST_CONNECTIONS)),
        ("RANDOM", None, BalancerChoice(Balancing.RANDOM)),
        ("hash", "header:X-User", BalancerChoice(Balancing.HASH, "header:X-User")),
        ("hash:cookie:SESSION", None, BalancerChoice(Balancing.HASH, "cookie:SESSION")),
        ("hash", None, BalancerChoice(Balancing.HASH, "client")),
        ("hash:query:user", None, BalancerChoice(Balancing.HASH, "query:user")),
    ],
)
def test_config_parse_balancer_choice(text: str, hash_on: str | None, expected: BalancerChoice) -> None:
    assert parse_balancer_choice(text, hash_on) == expected


@pytest.mark.parametrize(
    ("text", "hash_on"),
    [("fastest", None), ("round-robin", "header:X"), ("hash:body:x", None), ("hash:header:", None),
     ("hash:cookie:A", "cookie:B")],
)
def test_config_parse_balancer_choice_refuses(text: str, hash_on: str | None) -> None:
    with pytest.raises(ValueError):
        parse_balancer_choice(text, hash_on)


def test_config_loadbalancer_choice_for_service_or_default() -> None:
    sticky = BalancerChoice(Balancing.HASH, "header:X-User")
    settings = LoadBalancerSettings(BalancerChoice(Balancing.RANDOM), {"ws-service": sticky})
    assert isinstance(settings.services, MappingProxyType)
    assert settings.choice_for("ws-service") == sticky
    assert settings.choice_for("other") == BalancerChoice(Balancing.RANDOM)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"port": 70000},
        {"port": -1},
        {"workers": 0},
        {"tls_cert_path": "cert.pem"},
        {"head_timeout_s": 0},
        {"connect_timeout_s": -1},
        {"max_head_bytes": 0},
        {"idle_timeout_s": 0.0},
        {"drain_timeout_s": -1},
        {"host": ""},
    ],
)
def test_config_server_settings_refuse_invalid(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        ServerSettings(**kwargs)  # type: ignore[arg-type]


def test_config_gateway_config_services_and_unique_ids() -> None:
    routes = (RouteSpec("a", parse_upstream("lb://one")), RouteSpec("b", parse_upstream("http://h:1")),
              RouteSpec("c", parse_upstream("lb:ws://two")))
    assert GatewayConfig(routes=routes).services == frozenset({"one", "two"})
    with pytest.raises(ValueError, match="duplicate route id"):
        GatewayConfig(routes=(routes[0], routes[0]))


@pytest.mark.parametrize(
    ("text", "unit", "seconds"),
    [("10s", "s", 10.0), ("500ms", "s", 0.5), ("1m", "s", 60.0), ("2h", "s", 7200.0), ("1.5", "s", 1.5),
     ("2000", "ms", 2.0), ("PT5S", "ms", 5.0), ("PT1M30S", "s", 90.0), ("250us", "s", 0.00025)],
)
def test_config_durations(text: str, unit: str, seconds: float) -> None:
    assert parse_duration_s(text, default_unit=unit) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "ten", "5 parsecs", "PT", "1s2"])
def test_config_durations_refuse(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration_s(text, default_unit="s")
