"""The gateway's configuration as frozen, validated values: what `loader.load_config` builds from routes.yaml.

Every class checks itself in `__post_init__` (ValueError with the reason), so an invalid configuration
cannot exist; the loader turns those errors into ConfigErrors naming the file, line and key.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from gateway.config.settings_table import default
from gateway.model import BalancerChoice, Balancing, RouteMetadata, Upstream
from gateway.routing.cors import CorsSettings
from gateway.routing.filters import GatewayFilter
from gateway.routing.predicates import RoutePredicate
from gateway.routing.resilience import BreakerSettings

if TYPE_CHECKING:
    from gateway.config.locator import LocatorSettings

# What `wsgate.redis.url` may name: one server, a Redis Cluster (any node, or a seed list), a comma-separated list of
# servers (buckets split by hash slot), or a master that sentinels watch (CONTRACT section 7).
REDIS_SCHEMES = ("redis://", "rediss://", "unix://", "redis+sentinel://", "rediss+sentinel://")

_SERVICE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_DEFAULT_PORTS = {"http": 80, "ws": 80, "https": 443, "wss": 443}
_HASH_ON = re.compile(r"client|(header|cookie|query):[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


def _positive(name: str, value: float | None, *, allow_none: bool = True) -> None:
    if value is None:
        if not allow_none:
            raise ValueError(f"{name} is required")
        return
    if value <= 0:
        raise ValueError(f"{name} must be > 0, not {value}")


@dataclass(frozen=True, slots=True)
class ServerSettings:
    """Listening and proxying tunables of the gateway process (times in seconds).

    The defaults of the fields `wsgate:` keys fill are gateway.config.settings_table's, where each key is described.
    """

    host: str = "0.0.0.0"
    port: int = 8080
    workers: int | None = default("workers")
    tls_cert_path: str | None = default("tls_cert_path")
    tls_key_path: str | None = default("tls_key_path")
    head_timeout_s: float = default("head_timeout_s")
    defer_accept_s: float = default("defer_accept_s")
    max_head_bytes: int = default("max_head_bytes")
    max_connections: int = default("max_connections")
    connect_timeout_s: float = default("connect_timeout_s")
    # Reactor Netty's responseTimeout, which SCG's response-timeout sets; None or math.inf: no bound.
    response_timeout_s: float | None = default("response_timeout_s")
    idle_timeout_s: float | None = default("idle_timeout_s")
    drain_timeout_s: float = default("drain_timeout_s")
    admin_token: str | None = default("admin_token")
    node_management_key: str | None = default("node_management_key")
    upstream_tls_verify: bool = default("upstream_tls_verify")
    upstream_ca_path: str | None = default("upstream_ca_path")
    access_log: bool = default("access_log")
    redis_url: str | None = default("redis_url")
    redis_prefix: str | None = default("redis_prefix")
    native_relay: bool = default("native_relay")
    sockmap_relay: bool = default("sockmap_relay")
    sockmap_after_reads: int = default("sockmap_after_reads")
    native_http: bool = default("native_http")

    def __post_init__(self) -> None:
        if not self.host:
            raise ValueError("host must not be empty")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be 0-65535, not {self.port}")
        if self.workers is not None and self.workers < 1:
            raise ValueError(f"workers must be >= 1, not {self.workers}")
        if (self.tls_cert_path is None) != (self.tls_key_path is None):
            raise ValueError("TLS needs both a certificate and a key")
        _positive("head timeout", self.head_timeout_s, allow_none=False)
        if not (self.defer_accept_s >= 0 and math.isfinite(self.defer_accept_s)):
            raise ValueError(f"defer accept must be >= 0, not {self.defer_accept_s}")
        _positive("max head bytes", self.max_head_bytes, allow_none=False)
        _positive("max connections", self.max_connections, allow_none=False)
        _positive("connect timeout", self.connect_timeout_s, allow_none=False)
        _positive("response timeout", self.response_timeout_s)
        _positive("idle timeout", self.idle_timeout_s)
        if self.drain_timeout_s < 0:
            raise ValueError(f"drain timeout must be >= 0, not {self.drain_timeout_s}")
        if self.redis_url is not None and not self.redis_url.startswith(REDIS_SCHEMES):
            raise ValueError(f"redis url must start with {', '.join(REDIS_SCHEMES)}, not {self.redis_url!r}")

    @property
    def tls(self) -> bool:
        return self.tls_cert_path is not None


@dataclass(frozen=True, slots=True)
class ConsulSettings:
    """Where the Consul agent is and how to ask it."""

    host: str = "127.0.0.1"
    port: int = 8500
    scheme: str = "http"
    token: str | None = None
    passing_only: bool = True
    datacenter: str | None = None

    def __post_init__(self) -> None:
        if not self.host:
            raise ValueError("Consul host must not be empty")
        if not 0 < self.port <= 65535:
            raise ValueError(f"Consul port must be 1-65535, not {self.port}")
        if self.scheme not in ("http", "https"):
            raise ValueError(f"Consul scheme must be http or https, not {self.scheme!r}")

    @staticmethod
    def from_address(
        address: str, *, token: str | None = None, passing_only: bool = True, datacenter: str | None = None
    ) -> ConsulSettings:
        """Parse `host:port`, `host`, `[::1]:8500` or `http(s)://host:port`; ValueError if unusable."""
        text = address.strip()
        if not text:
            raise ValueError("empty Consul address")
        url = urlsplit(text if "://" in text else f"http://{text}")
        try:
            port = url.port
        except ValueError:
            raise ValueError(f"bad port in Consul address {address!r}") from None
        if not url.hostname or url.path not in ("", "/"):
            raise ValueError(f"bad Consul address {address!r} (host:port or http://host:port)")
        scheme = url.scheme
        default_port = 443 if scheme == "https" else 8500
        return ConsulSettings(url.hostname, port or default_port, scheme, token, passing_only, datacenter)


def parse_balancer_choice(text: str, hash_on: str | None = None) -> BalancerChoice:
    """`round-robin`, `least-connections`, `random`, `hash` (+ hash_on), or the short `hash:cookie:SESSION`."""
    algorithm, _, rest = text.strip().partition(":")
    algorithm = algorithm.strip().lower().replace("_", "-")
    try:
        balancing = Balancing(algorithm)
    except ValueError:
        names = ", ".join(b.value for b in Balancing)
        raise ValueError(f"unknown load-balancer algorithm {algorithm!r} (known: {names})") from None
    if rest:
        if hash_on is not None:
            raise ValueError("hash target given twice")
        hash_on = rest.strip()
    return BalancerChoice(balancing, _check_hash_on(balancing, hash_on))


def _check_hash_on(balancing: Balancing, hash_on: str | None) -> str | None:
    if balancing is not Balancing.HASH:
        if hash_on is not None:
            raise ValueError(f"hash-on only applies to the hash algorithm, not {balancing.value}")
        return None
    target = hash_on or "client"
    if not _HASH_ON.fullmatch(target):
        raise ValueError(f"bad hash-on {target!r} (header:NAME, cookie:NAME, query:NAME or client)")
    return target


@dataclass(frozen=True, slots=True)
class LoadBalancerSettings:
    """The default algorithm and per-service overrides."""

    default: BalancerChoice = field(default_factory=BalancerChoice)
    services: Mapping[str, BalancerChoice] = field(default_factory=lambda: MappingProxyType({}))

    def __post_init__(self) -> None:
        if not isinstance(self.services, MappingProxyType):
            object.__setattr__(self, "services", MappingProxyType(dict(self.services)))

    def choice_for(self, service: str) -> BalancerChoice:
        """The algorithm for `service` (its override, else the default)."""
        return self.services.get(service, self.default)


def parse_upstream(text: str) -> Upstream:
    """A route `uri`: http/ws/https/wss://host[:port] or lb://name, lb:ws://name, lb:http(s)://name."""
    text = text.strip()
    if text.startswith("forward:"):
        # SCG's ForwardPathFilter: the request goes back to the gateway's own handlers with this path.
        path = "/" + text[len("forward:"):].lstrip("/")
        return Upstream(scheme="forward", forward_path=path)
    if text.startswith("lb:"):
        rest = text[3:]
        scheme = "http"
        if not rest.startswith("//"):
            scheme, sep, rest = rest.partition("://")
            if not sep or scheme not in _DEFAULT_PORTS:
                raise ValueError(f"bad lb uri {text!r} (lb://name or lb:ws://name)")
            rest = "//" + rest
        name = rest[2:].split("/", 1)[0]
        if not _SERVICE.fullmatch(name):
            raise ValueError(f"bad service name in {text!r}")
        return Upstream(scheme=scheme, service=name)
    url = urlsplit(text)
    if url.scheme not in _DEFAULT_PORTS:
        raise ValueError(f"unsupported uri {text!r} (http, https, ws, wss or lb)")
    try:
        port = url.port
    except ValueError:
        raise ValueError(f"bad port in uri {text!r}") from None
    if not url.hostname:
        raise ValueError(f"no host in uri {text!r}")
    return Upstream(scheme=url.scheme, host=url.hostname, port=port or _DEFAULT_PORTS[url.scheme])


def format_upstream(upstream: Upstream) -> str:
    """The `uri` text of an Upstream, as the actuator shows it."""
    if upstream.forward_path is not None:
        return f"forward:{upstream.forward_path}"
    if upstream.service is not None:
        return f"lb://{upstream.service}" if upstream.scheme == "http" else f"lb:{upstream.scheme}://{upstream.service}"
    host = f"[{upstream.host}]" if upstream.host and ":" in upstream.host else upstream.host
    return f"{upstream.scheme}://{host}:{upstream.port}"


@dataclass(frozen=True, slots=True)
class RouteSpec:
    """One route: where to send requests, which requests (predicates), and how to rewrite them (filters)."""

    id: str
    uri: Upstream
    order: int = 0
    metadata: RouteMetadata = field(default_factory=RouteMetadata)
    predicates: tuple[RoutePredicate, ...] = ()
    filters: tuple[GatewayFilter, ...] = ()
    line: int | None = None

    def __post_init__(self) -> None:
        if not self.id:
            raise ValueError("route id must not be empty")
        if self.uri.service is None and self.uri.forward_path is None and (not self.uri.host or not self.uri.port):
            raise ValueError("route uri needs a host and port, or a service")


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    """Everything routes.yaml says; `source` is the file it came from."""

    server: ServerSettings = ServerSettings()
    routes: tuple[RouteSpec, ...] = ()
    default_filters: tuple[GatewayFilter, ...] = ()
    discovery: ConsulSettings | None = None
    loadbalancer: LoadBalancerSettings = field(default_factory=LoadBalancerSettings)
    source: str = ""
    cors: CorsSettings | None = None  # spring.cloud.gateway.globalcors
    breakers: tuple[tuple[str, BreakerSettings], ...] = ()  # resilience4j.circuitbreaker/timelimiter, by id
    locator: LocatorSettings | None = None  # discovery.locator, when enabled
    warnings: tuple[str, ...] = ()  # what `wsgate.unknown-filters: warn` left out, as `file:line: key: reason`
    profiles: tuple[str, ...] = ()  # the Spring profiles the file was read with

    def __post_init__(self) -> None:
        seen: set[str] = set()
        for route in self.routes:
            if route.id in seen:
                raise ValueError(f"duplicate route id {route.id!r}")
            seen.add(route.id)

    @property
    def services(self) -> frozenset[str]:
        """Names of the services that lb:// routes use."""
        return frozenset(r.uri.service for r in self.routes if r.uri.service is not None)
