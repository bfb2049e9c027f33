"""RequestRateLimiter's token bucket in Redis: SCG's `request_rate_limiter.lua`, run atomically by one script call.

Every gateway process runs the same script on the same two keys per (route, caller), so the bucket is shared and
consistent across processes. The script is loaded once (SCRIPT LOAD) and called by EVALSHA; a Redis that lost it
(restart, failover, SCRIPT FLUSH) answers NOSCRIPT and gets a plain EVAL, which caches it again. When Redis cannot
answer, requests pass (fail-open, SCG's behaviour) or get 503 (fail-closed); the failure is logged once per outage,
and for `retry_interval_s` after a failure requests are decided at once instead of each waiting `timeout_s` for a
Redis that is down (one request per interval probes it).

`wsgate.redis.url` takes the forms of CONTRACT section 7. A plain URL, or a comma-separated list of them, is asked
once (`INFO cluster`) what it is: a Redis Cluster (`cluster_enabled:1`) gets redis-py's RedisCluster, which sends each
bucket's script to the master holding the bucket's slot (both keys share the hash tag `{route.caller}`, so the script
never crosses slots) and follows MOVED, ASK and failovers; a single server is used as it is; a list of standalone
servers is sharded on the client by the bucket's hash slot. Sentinel URLs go to the master the sentinels name.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

import redis.asyncio
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.sentinel import Sentinel
from redis.crc import key_slot
from redis.exceptions import NoScriptError, RedisClusterException, RedisError

from gateway.model import RateLimit, RequestView
from gateway.ratelimit.bucket import (
    RateDecision,
    bucket_keys,
    decide,
    empty_key_decision,
    resolve_key,
    script_args,
    unavailable_decision,
)

log = logging.getLogger(__name__)

# SCG's token bucket (the two-key form): refill by elapsed whole seconds * rate up to capacity, take `requested`
# if there are that many, store both values with a TTL of twice the time to fill an empty bucket.
TOKEN_BUCKET_LUA = """
local tokens_key = KEYS[1]
local timestamp_key = KEYS[2]

local rate = tonumber(ARGV[1])
local capacity = tonumber(ARGV[2])
local now = tonumber(ARGV[3])
local requested = tonumber(ARGV[4])

local fill_time = capacity / rate
local ttl = math.floor(fill_time * 2)

local last_tokens = tonumber(redis.call("get", tokens_key))
if last_tokens == nil then
  last_tokens = capacity
end
local last_refreshed = tonumber(redis.call("get", timestamp_key))
if last_refreshed == nil then
  last_refreshed = 0
end

local delta = math.max(0, now - last_refreshed)
local filled_tokens = math.min(capacity, last_tokens + (delta * rate))
local allowed = filled_tokens >= requested
local new_tokens = filled_tokens
local allowed_num = 0
if allowed then
  new_tokens = filled_tokens - requested
  allowed_num = 1
end

if ttl > 0 then
  redis.call("setex", tokens_key, ttl, new_tokens)
  redis.call("setex", timestamp_key, ttl, now)
end

return { allowed_num, new_tokens }
"""
TOKEN_BUCKET_SHA = hashlib.sha1(TOKEN_BUCKET_LUA.encode()).hexdigest()


SENTINEL_SCHEMES = ("redis+sentinel://", "rediss+sentinel://")
PLAIN_SCHEMES = ("redis://", "rediss://", "unix://")


def plain_redis_urls(url: str) -> tuple[str, ...]:
    """The servers a `redis://` URL or a comma-separated list of them names; ValueError names what is wrong."""
    urls = tuple(item.strip() for item in url.split(",") if item.strip())
    if not urls:
        raise ValueError(f"no Redis URL in {url!r}")
    for item in urls:
        # Refused at start: found at the first limited request, it would fail every request instead.
        if not item.startswith(PLAIN_SCHEMES):
            raise ValueError(f"each Redis URL of a list must start with {', '.join(PLAIN_SCHEMES)}; {item!r} does "
                             f"not (in {url!r})")
    return urls


def check_redis_url(url: str) -> None:
    """Raise ValueError, naming the problem, when `url` is not something `redis_connection` can use."""
    if not url.startswith(SENTINEL_SCHEMES):
        plain_redis_urls(url)


class DetectedRedis:
    """One server, a Redis Cluster or a client-side list of servers, told apart by asking on first use.

    The question waits for the first rate-limited request because the gateway starts without Redis when no route
    limits; a failed question (Redis down) is asked again by the next request.
    """

    def __init__(self, url: str) -> None:
        self.urls = plain_redis_urls(url)
        self._servers: tuple[redis.asyncio.Redis, ...] | None = None
        self.cluster: RedisCluster | None = None
        self._lock = asyncio.Lock()

    @property
    def mode(self) -> str:
        """What the URL named: cluster, single, shards, or unknown before the first answer."""
        if self.cluster is not None:
            return "cluster"
        if self._servers is None:
            return "unknown"
        return "single" if len(self._servers) == 1 else "shards"

    async def for_key(self, key: str) -> redis.asyncio.Redis | RedisCluster:
        """The client that runs commands on `key`."""
        if self.cluster is None and self._servers is None:
            async with self._lock:
                if self.cluster is None and self._servers is None:
                    await self._detect()
        if self.cluster is not None:
            return self.cluster
        assert self._servers is not None
        # Every gateway has the same list, so each bucket lives on one server; the slot keeps both keys together.
        return self._servers[key_slot(key.encode()) % len(self._servers)]

    async def _detect(self) -> None:
        servers = tuple(redis.asyncio.from_url(url) for url in self.urls)
        error: BaseException | None = None
        for url, server in zip(self.urls, servers, strict=True):
            try:
                enabled = (await server.info("cluster")).get("cluster_enabled")
            except (RedisError, OSError) as exc:
                error = exc
                continue
            if enabled in (1, "1"):
                log.info("rate limiter: %s is a Redis Cluster", url)
                for each in servers:
                    await each.aclose()
                self.cluster = RedisCluster.from_url(url)
            else:
                self._servers = servers
            return
        for each in servers:
            await each.aclose()
        assert error is not None
        raise error

    async def aclose(self) -> None:
        if self.cluster is not None:
            await self.cluster.aclose()
        for server in self._servers or ():
            await server.aclose()


@dataclass
class RedisConnection:
    """The limiter's Redis client and, for a Sentinel URL, the sentinels' own connections, closed together."""

    client: redis.asyncio.Redis | DetectedRedis
    sentinel: Sentinel | None = None

    async def aclose(self) -> None:
        await self.client.aclose()
        if self.sentinel is not None:
            await self.sentinel.aclose()


def redis_connection(url: str) -> RedisConnection:
    """A client for `wsgate.redis.url` (connecting on first use): one server, a Redis Cluster, a list of servers,
    or a master that sentinels watch, `redis+sentinel://[user:password@]host:26379[,host:26379]/<master>[/<db>]`
    (CONTRACT section 7)."""
    if not url.startswith(SENTINEL_SCHEMES):
        return RedisConnection(DetectedRedis(url))
    parts = urlsplit(url.replace("+sentinel", "", 1))
    hosts = parts.netloc.rpartition("@")[2]
    sentinels = []
    for entry in hosts.split(","):
        host, _, port = entry.rpartition(":") if entry.rpartition(":")[2].isdigit() else (entry, "", "")
        sentinels.append((host.strip("[]"), int(port) if port else 26379))
    master, _, db = parts.path.strip("/").partition("/")
    sentinel = Sentinel(sentinels, socket_timeout=1.0)
    client: redis.asyncio.Redis = sentinel.master_for(
        unquote(master), db=int(db or 0), username=unquote(parts.username or "") or None,
        password=unquote(parts.password or "") or None, ssl=url.startswith("rediss"))
    return RedisConnection(client, sentinel)


@dataclass(frozen=True, slots=True)
class LaneRedis:
    """The Redis the native HTTP lane sends the token bucket script to itself (gateway/_http_redis.c)."""

    host: str  # an IPv4 address
    port: int
    key_prefix: str
    timeout_ms: int  # the limiter's timeout: after it the lane hands the request back as timed out


def lane_address(url: str) -> tuple[str, int] | None:
    """(IPv4 address, port) of a `redis://` URL the lane can speak to as it is: no user or password (AUTH), database
    0 (no SELECT), no TLS, no unix socket, no query, an IPv4 address rather than a host name; else None."""
    parts = urlsplit(url)
    try:
        port = parts.port or 6379
        socket.inet_pton(socket.AF_INET, parts.hostname or "")
    except (OSError, ValueError):
        return None
    if (parts.scheme != "redis" or parts.username or parts.password or parts.query
            or parts.path.strip("/") not in ("", "0")):
        return None
    assert parts.hostname is not None
    return parts.hostname, port


class _UnexpectedReply(RedisError):
    """Redis answered something that is not the script's `[allowed, tokens_left]`."""


class RedisRateLimiter:
    """Checks requests against RateLimits with a token bucket per (route, caller) in Redis."""

    def __init__(self, redis: redis.asyncio.Redis | RedisCluster | DetectedRedis, *, key_prefix: str = "",
                 fail_open: bool = True, timeout_s: float = 1.0, retry_interval_s: float = 1.0,
                 clock: Callable[[], float] = time.time) -> None:
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, not {timeout_s}")
        if retry_interval_s < 0:
            raise ValueError(f"retry_interval_s must be >= 0, not {retry_interval_s}")
        self._redis = redis
        self._key_prefix = key_prefix
        self._fail_open = fail_open
        self._timeout_s = timeout_s
        self._retry_interval_s = retry_interval_s
        self._skip_until = 0.0  # time.monotonic() before which Redis is not asked again after a failure
        # The script's `now`, in epoch seconds; injectable so tests replenish without sleeping.
        self._clock = clock
        self._loaded: set[int] = set()  # id() of each client that has had SCRIPT LOAD
        self._failing = False
        self._lane: LaneRedis | None = None

    def lane_redis(self) -> LaneRedis | None:
        """Where the native HTTP lane may run this limiter's script itself, or None (the Python path limits).

        Only a single server the lane speaks to (`lane_address`), known to be one: a URL is asked what it is (a
        Cluster node?) by the first limited request, on the Python path. Not with a test's clock either: the lane's
        `now` is the wall clock's second.
        """
        if self._lane is None and isinstance(self._redis, DetectedRedis) and self._redis.mode == "single" \
                and self._clock is time.time:
            address = lane_address(self._redis.urls[0])
            if address is not None:
                self._lane = LaneRedis(*address, self._key_prefix, max(1, round(self._timeout_s * 1000)))
        return self._lane

    def skipping(self) -> bool:
        """Whether requests are decided without Redis now (it failed less than `retry_interval_s` ago)."""
        return self._failing and time.monotonic() < self._skip_until

    def note_lane_timeout(self) -> None:
        """The native lane's call had no answer within `timeout_s`: the same outage as one of ours."""
        self._note_failure(TimeoutError())

    async def check(self, route_id: str, limit: RateLimit, request: RequestView) -> RateDecision:
        """Take `limit.requested_tokens` from the caller's bucket: pass, 429, 403 (empty key) or 503 (fail-closed)."""
        key = resolve_key(limit, request)
        if not key:
            return empty_key_decision(limit)
        keys = bucket_keys(route_id, key, key_prefix=self._key_prefix)
        args = script_args(limit, int(self._clock()))
        if self._failing and time.monotonic() < self._skip_until:
            return unavailable_decision(limit, fail_open=self._fail_open)
        try:
            async with asyncio.timeout(self._timeout_s):
                allowed, tokens_left = await self._run(keys, args)
        except (RedisError, RedisClusterException, OSError, TimeoutError) as exc:
            # RedisClusterException (no node of the cluster reachable, ...) is not a RedisError.
            self._note_failure(exc)
            return unavailable_decision(limit, fail_open=self._fail_open)
        if self._failing:
            self._failing = False
            log.warning("rate limiter: Redis answers again")
        return decide(limit, allowed, tokens_left)

    async def _run(self, keys: tuple[str, str], args: tuple[int, int, int, int]) -> tuple[bool, int]:
        client = await self._redis.for_key(keys[0]) if isinstance(self._redis, DetectedRedis) else self._redis
        if id(client) not in self._loaded:
            # On a cluster, SCRIPT LOAD reaches every master; a replica promoted later answers NOSCRIPT, hence EVAL.
            await client.script_load(TOKEN_BUCKET_LUA)
            self._loaded.add(id(client))
        try:
            reply = await client.evalsha(TOKEN_BUCKET_SHA, len(keys), *keys, *args)
        except NoScriptError:
            reply = await client.eval(TOKEN_BUCKET_LUA, len(keys), *keys, *args)
        if not (isinstance(reply, list) and len(reply) == 2 and all(isinstance(v, int) for v in reply)):
            raise _UnexpectedReply(f"unexpected token bucket reply {reply!r}")
        return reply[0] == 1, int(reply[1])

    def _note_failure(self, exc: BaseException) -> None:
        # One error per outage, not one per request: a flood of identical lines would bury everything else.
        self._skip_until = time.monotonic() + self._retry_interval_s
        reason = f"no answer within {self._timeout_s} s" if isinstance(exc, TimeoutError) else repr(exc)
        if not self._failing:
            self._failing = True
            policy = "letting requests through" if self._fail_open else "answering 503"
            log.error("rate limiter: Redis unavailable (%s), %s", reason, policy)
        else:
            log.debug("rate limiter: Redis still unavailable (%s)", reason)
