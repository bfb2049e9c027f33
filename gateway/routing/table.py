"""The route table: the first route (by `order`, then file order) whose predicates all hold; pure.

`RouteMatch.plan` runs the default filters and the route's filters in SCG's order (each list numbered from 1,
merged by number, default filters first on ties) and checks that the rewritten path is safe to send.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from types import MappingProxyType
from urllib.parse import quote, unquote

from gateway.config.model import GatewayConfig, RouteSpec, format_upstream
from gateway.errors import BadRequest, NoRoute
from gateway.model import ForwardPlan, HeaderOp, Headers, LocalAnswer, RequestView, ResponseEdit, Upstream
from gateway.plugins import PluginFilter
from gateway.proxy.responses import error_body
from gateway.routing.cors import CorsConfig, CorsFilter, CorsTable, is_cors_request, is_preflight
from gateway.routing.filters import GatewayFilter, PlanState
from gateway.routing.predicates import MatchContext, PathPredicate, WeightPredicate, no_weight_groups

# Characters a path may carry as they are; anything else a rewrite produced is percent-encoded.
_PATH_SAFE = "/!$&'()*+,;=:@-._~%"
_PLAIN_PATH = re.compile(r"/[A-Za-z0-9/!$&'()*+,;=:@\-._~]*")
_SEGMENT_SPLIT = re.compile(r"[/\\;]")  # an encoded '/' or '\\' (or ';' params) inside one segment


def ordered_filters(
    default_filters: tuple[GatewayFilter, ...], route_filters: tuple[GatewayFilter, ...]
) -> list[tuple[int, GatewayFilter]]:
    """SCG's filter order: both lists numbered from 1, stably sorted by number (defaults first on ties)."""
    numbered = [(i + 1, f) for i, f in enumerate(default_filters)] + [(i + 1, f) for i, f in enumerate(route_filters)]
    return sorted(numbered, key=lambda pair: pair[0])


def safe_path(path: str) -> str:
    """A rewritten path made sendable: leading '/', unsafe characters encoded; BadRequest for a '..' segment.

    Any '..' is refused, not only one that climbs above the root: `/svc/(?<rest>.*) -> /base/${rest}` must not let
    `/svc/../admin` reach `/admin`. Segments are checked decoded and split at encoded '/' and '\\' as well, since
    many servers decode before they normalise (`..%2F`, `%2e%2e`, `%252e%252e`, `..;x`).
    """
    if ".." not in path and "%" not in path and _PLAIN_PATH.fullmatch(path):
        return path  # the common case: nothing to encode, no segment can be '..' or hide CR/LF
    if any(ch in path for ch in "\r\n\0"):
        raise BadRequest("rewritten path contains CR, LF or NUL")
    if not path.startswith("/"):
        path = "/" + path
    for segment in path.split("/")[1:]:
        decoded = segment.split(";", 1)[0]
        for _ in range(3):  # double-encoded dots as well (`%252e%252e`): some servers decode twice
            decoded = unquote(decoded)
            if ".." in _SEGMENT_SPLIT.split(decoded):
                raise BadRequest("rewritten path contains a '..' segment")
    if "\r" in unquote(path) or "\n" in unquote(path):
        raise BadRequest("rewritten path contains an encoded CR or LF")
    return quote(path, safe=_PATH_SAFE)


def forwarded_prefix(original: str, rewritten: str) -> str:
    """What the filters removed from the front of the path (SCG's X-Forwarded-Prefix rule)."""
    if rewritten == original or not original.endswith(rewritten):
        return ""
    prefix = original[: len(original) - len(rewritten)]
    return prefix.rstrip("/") if rewritten.startswith("/") or prefix.endswith("/") else prefix


@dataclass(frozen=True, slots=True)
class RouteMatch:
    """A matched route and the URI template variables its predicates captured."""

    route: RouteSpec
    variables: Mapping[str, str]
    default_filters: tuple[GatewayFilter, ...] = ()
    chain: tuple[GatewayFilter, ...] | None = None  # the filters in order, when the table computed them already
    has_plugins: bool = False  # a plugin filter (gateway.plugins) runs in the server, after the plan is built

    def plan(self, request: RequestView, *, failure: tuple[str, str] | None = None) -> ForwardPlan:
        """Run the filters over `request`; BadRequest when the result cannot be sent.

        `failure` is the CircuitBreaker failure that forwarded this request here (for FallbackHeaders).
        """
        chain = self.chain
        if chain is None:
            chain = tuple(f for _, f in ordered_filters(self.default_filters, self.route.filters))
        if self.route.uri.forward_path is not None:
            request = replace(request, raw_path=self.route.uri.forward_path)  # SCG's ForwardPathFilter
        if not chain:
            # No filter: what the filters would have produced is the request itself (the common case).
            raw_path = request.raw_path
            path = safe_path(raw_path)
            variables = self.variables
            return ForwardPlan(path, request.query, tuple(request.headers), False, (), (),
                               forwarded_prefix(raw_path, path) if path != raw_path else "",
                               tuple(sorted(variables.items())) if variables else ())
        state = PlanState(
            request=request,
            path=request.raw_path,
            query=request.query,
            headers=list(request.headers),
            variables=dict(self.variables),
            failure=failure,
        )
        for gateway_filter in chain:
            gateway_filter.apply(state)
            if state.answer is not None:
                break  # the filter answered itself: SCG does not call the rest of the chain
        path = safe_path(state.path)
        return ForwardPlan(
            path=path,
            query=state.query,
            headers=tuple(state.headers),
            preserve_host=state.preserve_host,
            response_headers=tuple(state.response_ops),
            rate_limits=tuple(state.rate_limits),
            prefix=forwarded_prefix(request.raw_path, path),
            variables=tuple(sorted(self.variables.items())),
            answer=state.answer,
            body_edits=tuple(state.body_edits),
            retry=state.retry,
            breaker=state.breaker,
            request_url=state.request_url,
        )


@dataclass(slots=True)
class _WeightGroup:
    routes: list[tuple[str, int]] = field(default_factory=list)


class RouteTable:
    """Routes sorted by order (stable); `match` finds the first route whose predicates all hold."""

    __slots__ = ("_chains", "_config", "_cors", "_entries", "_groups", "_plugins", "_rng", "routes")

    def __init__(self, config: GatewayConfig, *, rng: random.Random | None = None) -> None:
        self._config = config
        self._rng = rng or random.Random()
        self.routes: tuple[RouteSpec, ...] = tuple(sorted(config.routes, key=lambda r: r.order))
        self._groups: dict[str, _WeightGroup] = {}
        self._chains = {
            route.id: tuple(f for _, f in ordered_filters(config.default_filters, route.filters))
            for route in self.routes
        }
        self._plugins = {rid: any(isinstance(f, PluginFilter) for f in chain) for rid, chain in self._chains.items()}
        self._cors = cors_table(config)
        if self._cors is not None:
            cors_first = CorsFilter(self._cors)
            self._chains = {route_id: (cors_first, *chain) for route_id, chain in self._chains.items()}
        for route in self.routes:
            for predicate in route.predicates:
                if isinstance(predicate, WeightPredicate):
                    group = self._groups.setdefault(predicate.group, _WeightGroup())
                    group.routes.append((route.id, predicate.weight))
        # Per route, what `match` needs: its predicates and the match to return when they capture no variable
        # (a RouteMatch is immutable, so one serves every such request).
        empty: Mapping[str, str] = MappingProxyType({})
        self._entries = tuple(
            (route, tuple(route.predicates),
             RouteMatch(route, empty, config.default_filters, self._chains[route.id], self._plugins[route.id]))
            for route in self.routes
        )

    def _choose(self, group_name: str) -> str | None:
        group = self._groups.get(group_name)
        if group is None:
            return None
        total = sum(weight for _, weight in group.routes)
        if total <= 0:
            return None
        point = self._rng.random() * total
        for route_id, weight in group.routes:
            point -= weight
            if point < 0:
                return route_id
        return group.routes[-1][0]

    def _weight_chooser(self) -> Callable[[str], str | None]:
        """One draw per group per request, as SCG's WeightCalculatorWebFilter does."""
        if not self._groups:
            return no_weight_groups
        chosen: dict[str, str | None] = {}

        def weight_choice(group: str) -> str | None:
            if group not in chosen:
                chosen[group] = self._choose(group)
            return chosen[group]

        return weight_choice

    def match(self, request: RequestView, *, now: datetime | None = None) -> RouteMatch | None:
        """The first matching route with its variables, or None (the caller answers 404)."""
        ctx = MatchContext(request, now, self._weight_chooser())
        for route, predicates, plain_match in self._entries:
            ctx.route_id = route.id
            if ctx.variables:
                ctx.variables = {}  # what a route that failed further on had captured
            for predicate in predicates:
                if not predicate.test(ctx):
                    break
            else:
                if not ctx.variables:
                    return plain_match
                return RouteMatch(route, MappingProxyType(ctx.variables), self._config.default_filters,
                                  self._chains[route.id], self._plugins[route.id])
        if self._cors is not None and is_cors_request(request):
            # No route. Preflights: SCG's DispatcherHandler answers (globalcors with add-to-simple-url-handler-mapping,
            # else 403). Other CORS requests: with that mapping, a 404 that carries the global CORS headers.
            cors_first = CorsFilter(self._cors, global_only=True)
            if is_preflight(request):
                return RouteMatch(_PREFLIGHT_ROUTE, MappingProxyType({}), (), (cors_first,))
            if self._cors.add_to_simple_url_handler_mapping:
                return RouteMatch(_PREFLIGHT_ROUTE, MappingProxyType({}), (), (cors_first, _NOT_FOUND))
        return None


@dataclass(frozen=True, slots=True)
class _NotFound:
    """Answers 404 (what the gateway answers without a route), after the CORS filter added its headers."""

    name = "NotFound"

    def apply(self, state: PlanState) -> None:
        if state.answer is None:
            body = error_body(NoRoute("no route matches"), state.request.raw_path)
            state.answer = LocalAnswer(404, (("Content-Type", "application/json"),), body)

    def describe(self) -> str:
        return "[NotFound]"


# The route of a CORS request no route matches; its filters always answer, so the uri is never dialed.
_PREFLIGHT_ROUTE = RouteSpec("cors-preflight", Upstream("http", "127.0.0.1", 9))
_NOT_FOUND = _NotFound()


def cors_table(config: GatewayConfig) -> CorsTable | None:
    """SCG's CORS path map for `config`, or None when the file configures no CORS."""
    entries: list[tuple[str, CorsConfig]] = []
    for route in config.routes:
        if route.metadata.cors is not None:
            paths = [p.patterns[0].pattern for p in route.predicates if isinstance(p, PathPredicate) and p.patterns]
            entries.append((paths[0] if paths else "/**", route.metadata.cors))
    settings = config.cors
    if not entries and (settings is None or not settings.configurations):
        return None
    global_entries = settings.configurations if settings is not None else ()
    simple = settings is not None and settings.add_to_simple_url_handler_mapping
    return CorsTable(entries, global_entries, add_to_simple_url_handler_mapping=simple)


def apply_header_ops(headers: Headers, ops: tuple[HeaderOp, ...]) -> Headers:
    """Apply response header edits (add appends, set replaces every value, remove drops every value)."""
    return apply_response_edits(200, headers, ops)[1]


def apply_response_edits(status: int, headers: Headers, edits: tuple[ResponseEdit, ...]) -> tuple[int, Headers]:
    """Apply the filters' response edits in filter order: the status and headers the client gets."""
    for edit in edits:
        status, headers = edit.edit(status, headers)
    return status, headers


def _describe_predicates(route: RouteSpec) -> str:
    texts = [p.describe() for p in route.predicates]
    if not texts:
        return "true"
    combined = texts[0]
    for text in texts[1:]:
        combined = f"({combined} && {text})"
    return combined


def describe_routes(config: GatewayConfig) -> list[dict[str, object]]:
    """The routes in SCG's verbose `/actuator/gateway/routes` JSON shape."""
    described: list[dict[str, object]] = []
    for route in sorted(config.routes, key=lambda r: r.order):
        filters = [f"[{f.describe()}, order = {n}]" for n, f in ordered_filters(config.default_filters, route.filters)]
        meta = route.metadata
        metadata: dict[str, object] = dict(meta.extra)
        for key, value in (("connect-timeout", meta.connect_timeout_s), ("response-timeout", meta.response_timeout_s)):
            if value is not None:
                metadata[key] = -1 if math.isinf(value) else round(value * 1000)  # SCG's -1: no bound
        if meta.idle_timeout_s is not None:
            metadata["idle-timeout"] = round(meta.idle_timeout_s * 1000)
        if meta.balancer is not None:
            algorithm = meta.balancer.algorithm.value
            metadata["load-balancer"] = f"{algorithm}:{meta.balancer.hash_on}" if meta.balancer.hash_on else algorithm
        if meta.retries:
            metadata["retries"] = meta.retries
        described.append(
            {
                "predicate": _describe_predicates(route),
                "route_id": route.id,
                "filters": filters,
                "uri": format_upstream(route.uri),
                "metadata": metadata,
                "order": route.order,
            }
        )
    return described
