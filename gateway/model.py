"""Values shared by the routing side (config, predicates, filters) and the proxy side (server, balancer).

This module is the seam between the two: routing turns a `RequestView` into a `ForwardPlan` for a
`RouteMatch`; the proxy dials the route's `Upstream`, sends the plan and applies `response_headers` to
what comes back. Pure: no aiohttp, redis or yaml here.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Protocol

from gateway.routing.resilience import BreakerSpec, RetryPolicy

if TYPE_CHECKING:
    from gateway.routing.cors import CorsConfig

Headers = tuple[tuple[str, str], ...]


def header_values(headers: Iterable[tuple[str, str]], name: str) -> list[str]:
    """Every value of header `name` (case-insensitive), in order."""
    lname = name.lower()
    return [value for key, value in headers if key.lower() == lname]


@dataclass(frozen=True, slots=True)
class RequestView:
    """What predicates and filters see of a client request; `raw_path` is percent-encoded as received."""

    method: str
    raw_path: str
    query: str = ""
    headers: Headers = ()
    remote_addr: str = "127.0.0.1"
    scheme: str = "http"

    def header(self, name: str) -> str | None:
        """The first value of header `name`, or None."""
        lname = name.lower()
        for key, value in self.headers:
            if key.lower() == lname:
                return value
        return None

    @property
    def host(self) -> str:
        return self.header("host") or ""

    @property
    def is_websocket(self) -> bool:
        upgrade = (self.header("upgrade") or "").lower()
        return upgrade == "websocket"


class Balancing(StrEnum):
    """Load-balancer algorithms."""

    ROUND_ROBIN = "round-robin"
    LEAST_CONNECTIONS = "least-connections"
    RANDOM = "random"
    HASH = "hash"


@dataclass(frozen=True, slots=True)
class BalancerChoice:
    """An algorithm and, for `hash`, what to hash: `header:NAME`, `cookie:NAME`, `query:NAME` or `client`."""

    algorithm: Balancing = Balancing.ROUND_ROBIN
    hash_on: str | None = None


@dataclass(frozen=True, slots=True)
class Upstream:
    """Where a route sends requests: a fixed host:port, or a service name resolved through discovery.

    `scheme` is the protocol used to dial: http, https, ws or wss. For `lb://name` it is http, for
    `lb:ws://name` ws; a WebSocket upgrade is forwarded over either (ws and http dial the same way).
    """

    scheme: str
    host: str | None = None
    port: int | None = None
    service: str | None = None
    forward_path: str | None = None  # `forward:/path`: the gateway's own handlers answer (scheme "forward")

    @property
    def is_discovered(self) -> bool:
        return self.service is not None

    @property
    def tls(self) -> bool:
        return self.scheme in ("https", "wss")


@dataclass(frozen=True, slots=True)
class RouteMetadata:
    """Per-route tunables from `metadata:` (SCG's connect-timeout/response-timeout in ms become seconds).

    None: the global setting applies; `math.inf`: no bound (SCG's -1).
    """

    connect_timeout_s: float | None = None
    response_timeout_s: float | None = None
    idle_timeout_s: float | None = None
    balancer: BalancerChoice | None = None
    retries: int = 0
    extra: tuple[tuple[str, str], ...] = ()
    cors: CorsConfig | None = None  # `metadata.cors` (SCG's per-route CORS)


@dataclass(frozen=True, slots=True)
class RateLimit:
    """A RequestRateLimiter filter's arguments (SCG's names); `key` says what identifies a caller."""

    replenish_rate: int
    burst_capacity: int
    requested_tokens: int = 1
    key: str = "client"  # client | header:NAME | principal
    deny_empty_key: bool = True
    status_code: int = 429  # SCG's `status-code`: the answer when the bucket is empty
    empty_key_status: int = 403  # SCG's `empty-key-status-code`: the answer to a request without a key


class ResponseEdit(Protocol):
    """A change a filter makes to the response on its way back (SCG's post-filter part); pure."""

    def edit(self, status: int, headers: Headers) -> tuple[int, Headers]: ...


@dataclass(frozen=True, slots=True)
class HeaderOp:
    """One edit of response headers: op is add, add-if-absent, set or remove."""

    op: str
    name: str
    value: str = ""

    def edit(self, status: int, headers: Headers) -> tuple[int, Headers]:
        """Add appends, set replaces every value, remove drops every value."""
        lname = self.name.lower()
        result = list(headers)
        if self.op in ("set", "remove"):
            result = [(k, v) for k, v in result if k.lower() != lname]
        if self.op in ("add", "set"):
            result.append((self.name, self.value))
        elif self.op == "add-if-absent" and not any(v.strip() for k, v in result if k.lower() == lname):
            result.append((self.name, self.value))  # AddResponseHeader's `override: false`
        return status, tuple(result)


@dataclass(frozen=True, slots=True)
class LocalAnswer:
    """A response a filter gives itself instead of forwarding (RedirectTo, RequestSize, ...)."""

    status: int
    headers: Headers = ()
    body: bytes = b""


class BodyEdit(Protocol):
    """A change of a whole (buffered) response body, given the response head after the header edits.

    An `optional` edit (a cache store) is skipped for a body too large to buffer, which then streams as usual.
    """

    @property
    def optional(self) -> bool: ...

    def edit_body(self, status: int, headers: Headers, body: bytes) -> tuple[Headers, bytes]: ...


@dataclass(frozen=True, slots=True)
class ForwardPlan:
    """What to send upstream after the route's filters ran.

    `headers` are the client's request headers after the filters, before the proxy removes hop-by-hop
    headers and adds X-Forwarded-*; `prefix` is what the filters stripped, for X-Forwarded-Prefix.
    """

    path: str
    query: str
    headers: Headers
    preserve_host: bool = False
    response_headers: tuple[ResponseEdit, ...] = ()
    rate_limits: tuple[RateLimit, ...] = ()
    prefix: str = ""
    variables: tuple[tuple[str, str], ...] = field(default=())
    answer: LocalAnswer | None = None  # a filter answered: nothing is forwarded
    body_edits: tuple[BodyEdit, ...] = ()
    retry: RetryPolicy | None = None
    breaker: BreakerSpec | None = None
    request_url: str | None = None  # RequestHeaderToRequestUri: where to send instead of the route's uri

    @property
    def target(self) -> str:
        """The request target: path plus `?query` when there is one."""
        return f"{self.path}?{self.query}" if self.query else self.path
