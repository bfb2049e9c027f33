"""What the server works from: the routing state in force and, per route, where and how it dials."""

from __future__ import annotations

import math
import socket
from dataclasses import dataclass
from functools import lru_cache

from gateway.config.model import GatewayConfig, RouteSpec
from gateway.discovery.base import Endpoint
from gateway.routing.table import RouteTable

# connect-timeout -1 for the relay thread, which always wants one: the kernel's SYN retries end a connect first.
NO_CONNECT_BOUND_S = 3600.0


@dataclass(frozen=True, slots=True)
class RoutingState:
    """The configuration in force and its compiled route table (replaced as a whole on reload)."""

    config: GatewayConfig
    table: RouteTable


class RouteTarget:
    """Where and how a route dials, worked out once per route and configuration instead of per request."""

    __slots__ = ("choice", "connect_timeout_s", "endpoints", "name", "native_dial", "response_timeout_s", "route",
                 "scheme", "service", "tls")

    def __init__(self, route: RouteSpec, config: GatewayConfig, *, plain_listener: bool = True) -> None:
        upstream = route.uri
        self.route = route
        self.service = upstream.service
        self.endpoints: tuple[Endpoint, ...] = ()  # a fixed host's one endpoint (a service's come from discovery)
        if upstream.service is not None:
            self.name = upstream.service
        else:
            assert upstream.host is not None
            port = upstream.port or (443 if upstream.tls else 80)
            self.name = f"{upstream.host}:{port}"
            self.endpoints = (Endpoint(upstream.host, port),)
        self.choice = route.metadata.balancer or config.loadbalancer.choice_for(upstream.service or "")
        # A route's own value wins; infinity is SCG's -1 (no bound), kept here as None (no timer).
        self.connect_timeout_s = _bound(route.metadata.connect_timeout_s or config.server.connect_timeout_s)
        self.response_timeout_s = _bound(route.metadata.response_timeout_s or config.server.response_timeout_s)
        self.tls = upstream.tls
        self.scheme = "https" if upstream.tls else "http"
        # Upgrades the relay thread may dial itself: plain TCP on both sides (it never speaks TLS).
        self.native_dial = config.server.native_relay and plain_listener and not upstream.tls

    @property
    def relay_connect_s(self) -> float:
        """The connect timeout for the relay thread's dial (which always wants one)."""
        return self.connect_timeout_s if self.connect_timeout_s is not None else NO_CONNECT_BOUND_S


def _bound(timeout_s: float | None) -> float | None:
    return None if timeout_s is None or math.isinf(timeout_s) else timeout_s


@lru_cache(maxsize=4096)
def ipv4_int(host: str) -> int | None:
    """`host` as the native lane takes it (an IPv4 address, network byte order read natively), or None."""
    try:
        packed = socket.inet_pton(socket.AF_INET, host)
    except (OSError, ValueError):
        return None
    return int.from_bytes(packed, "little")


@lru_cache(maxsize=4096)
def ip_literal(host: str) -> bool:
    """Whether `host` is an IPv4 or IPv6 address the relay thread can connect to without a name lookup."""
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            socket.inet_pton(family, host)
        except (OSError, ValueError):
            continue
        return True
    return False
