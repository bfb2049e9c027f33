"""CORS with Spring's semantics (`CorsConfiguration`, `DefaultCorsProcessor`) as SCG applies it; pure.

SCG keeps one path -> configuration map: each route's `metadata.cors` under the route's first Path pattern (`/**`
without one), then `globalcors.cors-configurations` for the patterns not taken yet; a request uses the first
pattern that matches its path. Requests a route matched are processed (a preflight is answered by the gateway and
never forwarded; a disallowed origin gets 403); with `add-to-simple-url-handler-mapping`, preflights no route
matches are answered from the global configurations; other preflights no route matches get 403.

One deliberate difference: without any CORS configuration in the file, nothing here runs (SCG would still answer
every preflight with 403), so files that leave CORS to their backends keep working.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from gateway.model import Headers, LocalAnswer, RequestView
from gateway.routing.pathpattern import PathPattern

if TYPE_CHECKING:
    from gateway.routing.filters.base import PlanState

ALL = "*"
DEFAULT_METHODS = ("GET", "HEAD")
VARY_HEADERS = ("Origin", "Access-Control-Request-Method", "Access-Control-Request-Headers")


def origin_pattern(declared: str) -> re.Pattern[str]:
    """Spring's OriginPattern: `*` matches any text, a trailing `:[8080,8081]` or `:[*]` lists the ports."""
    ports = None
    if declared.endswith("]"):
        index = declared.rfind(":[")
        if index != -1:
            ports = declared[index + 2:-1]
            declared = declared[:index]
    regex = ".*".join(re.escape(part) for part in declared.split("*"))
    if ports is not None:
        regex += r"(:\d+)?" if ports == ALL else ":(" + "|".join(re.escape(p.strip()) for p in ports.split(",")) + ")"
    return re.compile(regex)


@dataclass(frozen=True, slots=True)
class CorsConfig:
    """Spring's CorsConfiguration: None means "not set" (allowedMethods then defaults to GET, HEAD)."""

    allowed_origins: tuple[str, ...] = ()
    allowed_origin_patterns: tuple[str, ...] = ()
    allowed_methods: tuple[str, ...] | None = None
    allowed_headers: tuple[str, ...] = ()
    exposed_headers: tuple[str, ...] = ()
    allow_credentials: bool | None = None
    max_age_s: int | None = None
    _patterns: tuple[re.Pattern[str], ...] = field(default=(), compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.allow_credentials and ALL in self.allowed_origins:
            raise ValueError('When allowCredentials is true, allowedOrigins cannot contain the special value "*" '
                             'since that cannot be set on the "Access-Control-Allow-Origin" response header. To '
                             'allow credentials to a set of origins, list them explicitly or consider using '
                             '"allowedOriginPatterns" instead.')
        object.__setattr__(self, "allowed_origins", tuple(o.rstrip("/") if o != ALL else o
                                                           for o in self.allowed_origins))
        object.__setattr__(self, "_patterns", tuple(origin_pattern(p.rstrip("/"))
                                                    for p in self.allowed_origin_patterns))

    def check_origin(self, origin: str) -> str | None:
        """The Access-Control-Allow-Origin value for `origin`, or None when it is not allowed."""
        if not origin.strip():
            return None
        candidate = origin.rstrip("/")
        if ALL in self.allowed_origins:
            return ALL
        if any(candidate.lower() == allowed.lower() for allowed in self.allowed_origins):
            return origin
        for declared, pattern in zip(self.allowed_origin_patterns, self._patterns, strict=True):
            if declared == ALL or pattern.fullmatch(candidate):
                return origin
        return None

    def check_method(self, method: str) -> tuple[str, ...] | None:
        """The methods to announce for `method`, or None when it is not allowed."""
        methods = DEFAULT_METHODS if self.allowed_methods is None else tuple(m.upper() for m in self.allowed_methods)
        if ALL in methods:
            return (method,)
        return methods if method in methods else None

    def check_headers(self, requested: tuple[str, ...]) -> tuple[str, ...] | None:
        """The requested headers that are allowed (None when none is, though some were requested)."""
        if not requested:
            return ()
        if not self.allowed_headers:
            return None
        any_header = ALL in self.allowed_headers
        allowed = {h.lower() for h in self.allowed_headers}
        result = tuple(h.strip() for h in requested if h.strip() and (any_header or h.strip().lower() in allowed))
        return result or None


@dataclass(frozen=True, slots=True)
class CorsSettings:
    """`spring.cloud.gateway.globalcors`: path pattern -> configuration, and add-to-simple-url-handler-mapping."""

    configurations: tuple[tuple[str, CorsConfig], ...] = ()
    add_to_simple_url_handler_mapping: bool = False


def is_preflight(request: RequestView) -> bool:
    """An OPTIONS request with Origin and Access-Control-Request-Method."""
    return (request.method == "OPTIONS" and request.header("origin") is not None
            and request.header("access-control-request-method") is not None)


def is_cors_request(request: RequestView) -> bool:
    """A request with an Origin other than the gateway's own (scheme, host and port)."""
    origin = request.header("origin")
    if origin is None:
        return False
    return origin.rstrip("/").lower() != f"{request.scheme}://{request.host}".lower()


@dataclass(frozen=True, slots=True)
class CorsEdit:
    """The CORS response headers for an actual (not preflight) request; nothing if the response set its own."""

    headers: Headers

    def edit(self, status: int, headers: Headers) -> tuple[int, Headers]:
        if any(k.lower() == "access-control-allow-origin" for k, _ in headers):
            return status, add_vary(headers)
        return status, add_vary(headers) + self.headers


def add_vary(headers: Headers) -> Headers:
    """Spring adds `Vary: Origin, Access-Control-Request-Method, Access-Control-Request-Headers` when missing."""
    present = {v.strip().lower() for k, value in headers if k.lower() == "vary" for v in value.split(",")}
    missing = tuple(("Vary", v) for v in VARY_HEADERS if v.lower() not in present)
    return headers + missing


@dataclass(frozen=True, slots=True)
class VaryEdit:
    """Only the Vary headers (a request that is not a CORS request)."""

    def edit(self, status: int, headers: Headers) -> tuple[int, Headers]:
        return status, add_vary(headers)


def process(config: CorsConfig | None, request: RequestView) -> LocalAnswer | CorsEdit | None:
    """DefaultCorsProcessor: a preflight's answer, a 403, the headers for an actual request, or None (not CORS)."""
    if not is_cors_request(request):
        return None
    preflight = is_preflight(request)
    rejected = LocalAnswer(403, tuple(("Vary", v) for v in VARY_HEADERS))  # WebFlux rejects with an empty body
    if config is None:
        return rejected if preflight else None
    origin = request.header("origin") or ""
    allow_origin = config.check_origin(origin)
    if allow_origin is None:
        return rejected
    method = (request.header("access-control-request-method") or "").strip() if preflight else request.method
    methods = config.check_method(method)
    if methods is None:
        return rejected
    if preflight:
        raw = request.header("access-control-request-headers") or ""
        requested = tuple(h for h in (part.strip() for part in raw.split(",")) if h)
    else:
        requested = tuple(dict.fromkeys(k for k, _ in request.headers))
    allow_headers = config.check_headers(requested)
    if preflight and allow_headers is None:
        return rejected
    out: list[tuple[str, str]] = [("Access-Control-Allow-Origin", allow_origin)]
    if preflight:
        out.append(("Access-Control-Allow-Methods", ",".join(methods)))
        if allow_headers:
            out.append(("Access-Control-Allow-Headers", ", ".join(allow_headers)))
    if config.exposed_headers:
        out.append(("Access-Control-Expose-Headers", ", ".join(config.exposed_headers)))
    if config.allow_credentials:
        out.append(("Access-Control-Allow-Credentials", "true"))
    if preflight and config.max_age_s is not None:
        out.append(("Access-Control-Max-Age", str(config.max_age_s)))
    if preflight:
        return LocalAnswer(200, (*(("Vary", v) for v in VARY_HEADERS), *out))
    return CorsEdit(tuple(out))


class CorsTable:
    """SCG's path -> CorsConfiguration map for one configuration (routes' metadata first, then globalcors)."""

    def __init__(self, entries: list[tuple[str, CorsConfig]], global_entries: tuple[tuple[str, CorsConfig], ...],
                 *, add_to_simple_url_handler_mapping: bool) -> None:
        seen: dict[str, CorsConfig] = {}
        for pattern, config in (*entries, *global_entries):
            seen.setdefault(pattern, config)
        self._entries = tuple((PathPattern(p), c) for p, c in seen.items())
        # What answers preflights no route matches: the global configurations, if added to the simple URL mapping.
        self._global = tuple((PathPattern(p), c) for p, c in global_entries) if add_to_simple_url_handler_mapping \
            else ()
        self.add_to_simple_url_handler_mapping = add_to_simple_url_handler_mapping

    def lookup(self, raw_path: str, *, global_only: bool = False) -> CorsConfig | None:
        """The configuration of the first pattern that matches `raw_path`."""
        for pattern, config in self._global if global_only else self._entries:
            if pattern.matches(raw_path):
                return config
        return None


@dataclass(frozen=True, slots=True)
class CorsFilter:
    """Runs first on every route when CORS is configured: answers preflights and disallowed origins, adds headers."""

    table: CorsTable
    global_only: bool = False

    name = "Cors"

    def apply(self, state: PlanState) -> None:
        request = state.request
        outcome = process(self.table.lookup(request.raw_path, global_only=self.global_only), request)
        if isinstance(outcome, LocalAnswer):
            state.answer = outcome
        elif not request.is_websocket:
            # Browsers do not read CORS headers on a WebSocket handshake (its Origin is still checked above); leaving
            # its 101 unedited keeps the relay thread's dial for it.
            state.response_ops.append(outcome if outcome is not None else VaryEdit())

    def describe(self) -> str:
        return "[Cors]"
