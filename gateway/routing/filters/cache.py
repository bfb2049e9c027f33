"""`LocalResponseCache=timeToLive, size` with SCG's semantics (the rules are in `gateway.routing.response_cache`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from gateway.routing.factory import Definition, SpecError, bind, get_data_size, get_duration_s, relaxed
from gateway.routing.filters.base import PlanState
from gateway.routing.response_cache import CacheStoreEdit, ResponseCache, is_no_cache_request, request_cacheable


@dataclass(frozen=True, slots=True)
class LocalResponseCache:
    """Answers from the route's cache when it can, and asks the proxy to store what the instance answers."""

    cache: ResponseCache = field(compare=False)

    name = "LocalResponseCache"

    def apply(self, state: PlanState) -> None:
        request = state.request
        if not request_cacheable(request) or is_no_cache_request(request):
            return  # no-cache: revalidate with the instance and (SKIP_UPDATE_CACHE_ENTRY) keep the entry
        hit = self.cache.lookup(request)
        if hit is not None:
            state.answer = hit
        else:
            state.body_edits.append(CacheStoreEdit(self.cache, request))

    def describe(self) -> str:
        size = f", size = {self.cache.max_bytes}B" if self.cache.max_bytes is not None else ""
        return f"[LocalResponseCache timeToLive = {self.cache.ttl_s:g}s{size}]"


def local_response_cache(definition: Definition) -> LocalResponseCache:
    """Build LocalResponseCache (timeToLive: 5m by default; size: no bound by default)."""
    args = bind(definition, ("timeToLive", "size"))
    ttl = get_duration_s(args, "timeToLive", default=300.0)
    assert ttl is not None
    if ttl < 0:
        raise SpecError("timeToLive must not be negative", key="timeToLive")
    size = get_data_size(args, "size", default=0) if relaxed("size") in args else None
    return LocalResponseCache(ResponseCache(ttl, size))
