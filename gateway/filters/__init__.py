"""Gateway filters by SCG name; `build_filter` turns a `Definition` into a compiled `GatewayFilter`."""

from __future__ import annotations

from collections.abc import Callable

from gateway.factory import Definition, SpecError
from gateway.filters import headers, path, rate_limiter
from gateway.filters.base import GatewayFilter, PlanState

FILTERS: dict[str, Callable[[Definition], GatewayFilter]] = {
    "RewritePath": path.rewrite_path,
    "StripPrefix": path.strip_prefix,
    "PrefixPath": path.prefix_path,
    "SetPath": path.set_path,
    "AddRequestHeader": headers.add_request_header,
    "SetRequestHeader": headers.set_request_header,
    "RemoveRequestHeader": headers.remove_request_header,
    "AddResponseHeader": headers.add_response_header,
    "SetResponseHeader": headers.set_response_header,
    "RemoveResponseHeader": headers.remove_response_header,
    "PreserveHostHeader": headers.preserve_host_header,
    "RequestRateLimiter": rate_limiter.request_rate_limiter,
}

__all__ = ["FILTERS", "GatewayFilter", "PlanState", "build_filter"]


def build_filter(definition: Definition) -> GatewayFilter:
    """Compile one filter definition; SpecError for an unknown name or bad arguments."""
    factory = FILTERS.get(definition.name)
    if factory is None:
        raise SpecError(f"unknown filter {definition.name!r} (known: {', '.join(sorted(FILTERS))})")
    return factory(definition)
