"""SCG's LocalResponseCache: a per-route in-memory cache of GET responses (ResponseCacheManager's rules); pure.

- Cacheable requests: GET without a body whose Cache-Control has neither `private` nor `no-store`. A request with
  `no-cache` goes to the instance, and (SCG's default SKIP_UPDATE_CACHE_ENTRY) its answer is not stored.
- Cacheable responses: 200, 206 or 301, Cache-Control without `private`/`no-store`, Vary other than `*`.
- The key: the request URI, its Authorization and Cookie headers, and the headers the response's Vary names.
- Entries live `timeToLive` (5 minutes by default); `size` bounds the bytes kept (oldest entries go first).
- Responses that are stored or served from the cache get `Cache-Control: max-age=<seconds left>` (with no-cache
  directives removed while it is positive, `no-cache,must-revalidate` added at 0), and lose Pragma and Expires.
"""

from __future__ import annotations

import re
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from gateway.model import Headers, LocalAnswer, RequestView

_STATUSES = (200, 206, 301)
_FORBIDDEN = ("private", "no-store")
_MAX_AGE = re.compile(r"\bmax-age=\d+\b")
_NO_CACHE = re.compile(r"(\s|,|^)no-cache(\s|,|$)")


def _values(headers: Headers, name: str) -> list[str]:
    return [v for k, v in headers if k.lower() == name]


def _cache_control_allows(headers: Headers) -> bool:
    return not any(v.strip() in _FORBIDDEN for v in _values(headers, "cache-control"))


def is_no_cache_request(request: RequestView) -> bool:
    """A request that asks not to be served from the cache."""
    return any(_NO_CACHE.search(v) for v in _values(request.headers, "cache-control"))


def request_cacheable(request: RequestView) -> bool:
    """GET, no body, and Cache-Control allows it."""
    length = (request.header("content-length") or "0").strip()
    has_body = (length.isdigit() and int(length) > 0) or request.header("transfer-encoding") is not None
    return request.method == "GET" and not has_body and _cache_control_allows(request.headers)


def response_cacheable(status: int, headers: Headers) -> bool:
    """200/206/301, Cache-Control allows it, and Vary is not `*`."""
    return (status in _STATUSES and _cache_control_allows(headers)
            and not any(v.strip() == "*" for v in _values(headers, "vary")))


def with_max_age(headers: Headers, seconds: int) -> Headers:
    """SCG's after-cache mutators: max-age set, Pragma/Expires removed, no-cache directives by max-age."""
    kept = [(k, v) for k, v in headers if k.lower() not in ("pragma", "expires", "cache-control")]
    controls = _values(headers, "cache-control")
    if any("max-age=" in v for v in controls):
        controls = [_MAX_AGE.sub(f"max-age={seconds}", v, count=1) if "max-age=" in v else v for v in controls]
    else:
        controls = [*controls, f"max-age={seconds}"]
    joined = ",".join(controls)
    if seconds > 0:
        joined = ",".join(d for d in re.split(r"\s*,\s*", joined) if not re.fullmatch(
            "must-revalidate|no-cache|no-store", d))
    else:
        joined += "" if "no-cache" in joined else ",no-cache"
        joined += "" if "must-revalidate" in joined else ",must-revalidate"
    return (*kept, ("Cache-Control", joined))


@dataclass(frozen=True, slots=True)
class CachedResponse:
    """A stored answer and when it was stored."""

    status: int
    headers: Headers
    body: bytes
    stored_at: float


@dataclass
class ResponseCache:
    """One route's cache (per worker): entries by key, the Vary headers by URI key, bounded by age and bytes."""

    ttl_s: float = 300.0
    max_bytes: int | None = None
    clock: Callable[[], float] = time.monotonic
    _entries: OrderedDict[str, CachedResponse] = field(default_factory=OrderedDict)
    _vary: dict[str, tuple[str, ...]] = field(default_factory=dict)
    _bytes: int = 0

    def _key(self, request: RequestView, vary: tuple[str, ...]) -> str:
        uri = f"{request.scheme}://{request.host}{request.raw_path}" + (f"?{request.query}" if request.query else "")
        parts = [uri, ",".join(_values(request.headers, "authorization")), ";".join(_values(request.headers, "cookie"))]
        parts += [",".join(_values(request.headers, name.lower())) for name in sorted(vary)]
        return "\n".join(parts)

    def _meta_key(self, request: RequestView) -> str:
        return self._key(request, ())

    def lookup(self, request: RequestView) -> LocalAnswer | None:
        """The cached answer for `request` (max-age set to what is left of its life), or None."""
        key = self._key(request, self._vary.get(self._meta_key(request), ()))
        entry = self._entries.get(key)
        if entry is None:
            return None
        age = self.clock() - entry.stored_at
        if age >= self.ttl_s:
            self._drop(key)
            return None
        return LocalAnswer(entry.status, with_max_age(entry.headers, max(0, int(self.ttl_s - age))), entry.body)

    def store(self, request: RequestView, status: int, headers: Headers, body: bytes) -> Headers:
        """Keep a cacheable response; returns the headers to send (max-age for a full life)."""
        vary = tuple(v.strip() for value in _values(headers, "vary") for v in value.split(",") if v.strip())
        self._vary[self._meta_key(request)] = vary
        key = self._key(request, vary)
        self._drop(key)
        size = len(body) + sum(len(k) + len(v) for k, v in headers)
        if self.max_bytes is None or size <= self.max_bytes:
            self._entries[key] = CachedResponse(status, headers, body, self.clock())
            self._bytes += size
            while self.max_bytes is not None and self._bytes > self.max_bytes and self._entries:
                self._drop(next(iter(self._entries)))
        return with_max_age(headers, int(self.ttl_s))

    def _drop(self, key: str) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            self._bytes -= len(entry.body) + sum(len(k) + len(v) for k, v in entry.headers)


@dataclass(frozen=True, slots=True)
class CacheStoreEdit:
    """The body edit that stores the instance's answer to one request (optional: a large body just passes)."""

    cache: ResponseCache
    request: RequestView
    optional: bool = True

    def edit_body(self, status: int, headers: Headers, body: bytes) -> tuple[Headers, bytes]:
        if response_cacheable(status, headers):
            return self.cache.store(self.request, status, headers, body), body
        return headers, body
