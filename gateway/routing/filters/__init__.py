"""Gateway filters by SCG name; `build_filter` turns a `Definition` into a compiled `GatewayFilter`."""

from __future__ import annotations

from collections.abc import Callable

from gateway.routing.factory import Definition, SpecError
from gateway.routing.filters import answers, cache, headers, misc, params, path, rate_limiter, resilience, response
from gateway.routing.filters.base import GatewayFilter, PlanState

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
    "MapRequestHeader": headers.map_request_header,
    "AddRequestHeadersIfNotPresent": headers.add_request_headers_if_not_present,
    "SetRequestHostHeader": headers.set_request_host_header,
    "AddRequestParameter": params.add_request_parameter,
    "RemoveRequestParameter": params.remove_request_parameter,
    "RewriteRequestParameter": params.rewrite_request_parameter,
    "DedupeResponseHeader": response.dedupe_response_header,
    "RewriteResponseHeader": response.rewrite_response_header,
    "RewriteLocationResponseHeader": response.rewrite_location_response_header,
    "SecureHeaders": response.secure_headers,
    "SetStatus": response.set_status,
    "RedirectTo": answers.redirect_to,
    "RequestSize": answers.request_size,
    "RequestHeaderSize": answers.request_header_size,
    "TokenRelay": misc.token_relay,
    "SaveSession": misc.save_session,
    "CacheRequestBody": misc.cache_request_body,
    "FallbackHeaders": misc.fallback_headers,
    "RequestHeaderToRequestUri": misc.request_header_to_request_uri,
    "SetRequestUri": misc.set_request_uri,
    "Hystrix": misc.refused("Hystrix was removed in Spring Cloud Gateway 3.0; use CircuitBreaker (same name and "
                            "fallbackUri arguments)"),
    "JsonToGrpc": misc.refused("it needs gRPC stubs and a protobuf descriptor, which wsgate does not load"),
    "RemoveJsonAttributesResponseBody": misc.remove_json_attributes_response_body,
    "ModifyRequestBody": misc.JAVA_ONLY,
    "ModifyResponseBody": misc.JAVA_ONLY,
    "LocalResponseCache": cache.local_response_cache,
    "Retry": resilience.retry,
    "CircuitBreaker": resilience.circuit_breaker,
}

__all__ = ["FILTERS", "GatewayFilter", "PlanState", "build_filter"]


def build_filter(definition: Definition) -> GatewayFilter:
    """Compile one filter definition; SpecError for an unknown name or bad arguments."""
    factory = FILTERS.get(definition.name)
    if factory is None:
        raise SpecError(f"unknown filter {definition.name!r} (known: {', '.join(sorted(FILTERS))})")
    return factory(definition)
