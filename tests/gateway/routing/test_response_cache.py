"""LocalResponseCache's rules, after SCG's LocalResponseCacheGatewayFilterFactoryTests and ResponseCacheManager
(spring-cloud-gateway-server-webflux/src/test/java/org/springframework/cloud/gateway/filter/factory/cache/)."""

from __future__ import annotations

import pytest

from gateway.model import Headers, RequestView
from gateway.routing.factory import Definition
from gateway.routing.filters import PlanState, build_filter
from gateway.routing.response_cache import ResponseCache, request_cacheable, response_cacheable, with_max_age


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def get(path: str = "/x", *headers: tuple[str, str], method: str = "GET") -> RequestView:
    return RequestView(method, path, "", (("Host", "www.localresponsecache.org"), *headers))


@pytest.mark.parametrize(
    ("req", "cacheable"),
    [
        (get(), True),
        (get("/x", ("Content-Length", "3")), False),  # shouldNotCacheResponseWhenGetRequestHasBody
        (get("/x", method="POST"), False),  # shouldNotCacheResponseWhenPostRequestHasBody
        (get("/x", ("Cache-Control", "no-store")), False),  # shouldNotCacheWhenCacheControlAsksToDoNotCache
        (get("/x", ("Cache-Control", "private")), False),
    ],
)
def test_response_cache_request_cacheable(req: RequestView, cacheable: bool) -> None:
    assert request_cacheable(req) is cacheable


@pytest.mark.parametrize(
    ("status", "headers", "cacheable"),
    [
        (200, (), True), (206, (), True), (301, (), True), (404, (), False), (500, (), False),
        (200, (("Vary", "*"),), False),  # shouldNotCacheResponseWhenResponseVaryIsWildcard
        (200, (("Cache-Control", "no-store"),), False),
    ],
)
def test_response_cache_response_cacheable(status: int, headers: Headers, cacheable: bool) -> None:
    assert response_cacheable(status, headers) is cacheable


@pytest.mark.parametrize(
    ("headers", "seconds", "expected"),
    [
        ((), 300, "max-age=300"),
        ((("Cache-Control", "max-age=10, must-revalidate, no-cache"),), 5, "max-age=5"),
        ((("Cache-Control", "public"),), 0, "public,max-age=0,no-cache,must-revalidate"),
        ((("Pragma", "no-cache"), ("Expires", "0")), 60, "max-age=60"),
    ],
)
def test_response_cache_max_age(headers: Headers, seconds: int, expected: str) -> None:
    out = with_max_age(headers, seconds)
    assert dict(out)["Cache-Control"] == expected
    assert not {"Pragma", "Expires"} & {k for k, _ in out}


def test_response_cache_lookup_store_ttl_vary_and_authorization() -> None:
    clock = Clock()
    cache = ResponseCache(ttl_s=60, clock=clock)
    assert cache.lookup(get()) is None
    cache.store(get(), 200, (("X-Custom", "1"), ("Vary", "X-Lang")), b"one")
    clock.now += 20
    hit = cache.lookup(get())
    assert hit is not None and hit.body == b"one" and dict(hit.headers)["Cache-Control"] == "max-age=40"
    assert cache.lookup(get("/other")) is None  # shouldNotCacheResponseWhenPathIsDifferent
    assert cache.lookup(get("/x", ("X-Lang", "fr"))) is None  # shouldNotCacheResponseWhenVaryHeaderIsDifferent
    assert cache.lookup(get("/x", ("X-Other", "2"))) is not None  # ...WhenOnlyNonVaryHeaderIsDifferent
    assert cache.lookup(get("/x", ("Authorization", "2"))) is None  # ...WhenAuthorizationHeaderIsDifferent
    clock.now += 40
    assert cache.lookup(get()) is None  # shouldNotCacheResponseWhenTimeToLiveIsReached


def test_response_cache_size_bound() -> None:
    cache = ResponseCache(ttl_s=60, max_bytes=10)
    cache.store(get("/big"), 200, (), b"x" * 11)  # shouldNotCacheWhenLocalResponseCacheSizeIsReached
    assert cache.lookup(get("/big")) is None
    cache.store(get("/a"), 200, (), b"aaaaaa")
    cache.store(get("/b"), 200, (), b"bbbbbb")  # the oldest entry goes
    assert cache.lookup(get("/a")) is None and cache.lookup(get("/b")) is not None


def test_local_response_cache_filter_arguments_and_no_cache_requests() -> None:
    built = build_filter(Definition.shortcut("LocalResponseCache=30m, 500MB"))
    assert built.describe() == "[LocalResponseCache timeToLive = 1800s, size = 524288000B]"
    state = PlanState(get("/x", ("Cache-Control", "no-cache")), "/x", "", [], {})
    built.apply(state)
    assert state.body_edits == [] and state.answer is None
