"""Redis clients for the shards `--redis` names: a bounded blocking pool per shard, through Sentinel when asked.

A Sentinel shard asks its sentinels for the master before each new connection and drops idle connections to a
master that changed, so a failover is followed without a restart (redis-py's `SentinelConnectionPool`). A connection
that finds its server demoted to a replica (`READONLY`) is closed by redis-py and the next attempt asks again.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool

from wsnode.redis_urls import SENTINEL_SCHEMES, parse_sentinel_url


class BlockingSentinelPool(SentinelConnectionPool, aioredis.BlockingConnectionPool):
    """Sentinel's master lookup with the blocking pool's bound: a burst of callers waits for a connection instead of
    failing with "Too many connections"."""


@dataclass
class ShardClient:
    """One shard's client and what must be closed with it."""

    url: str
    client: aioredis.Redis
    pool: aioredis.ConnectionPool
    sentinel: Sentinel | None = field(default=None)

    async def aclose(self) -> None:
        await self.client.aclose()
        await self.pool.disconnect()
        if self.sentinel is not None:
            await self.sentinel.aclose()


def connect_shard(url: str, *, max_connections: int, pool_timeout_s: float, **connection: Any) -> ShardClient:
    """A client for one `--redis` item (connections are opened lazily, on first use)."""
    if not url.startswith(SENTINEL_SCHEMES):
        pool = aioredis.BlockingConnectionPool.from_url(url, max_connections=max_connections,
                                                        timeout=pool_timeout_s, **connection)
        return ShardClient(url, aioredis.Redis(connection_pool=pool), pool)
    target = parse_sentinel_url(url)
    timeouts: dict[str, Any] = {key: connection[key] for key in ("socket_timeout", "socket_connect_timeout")
                                if key in connection}
    sentinel = Sentinel(list(target.sentinels), sentinel_kwargs=timeouts)
    # redis-py types the sentinel pool's constructor loosely (it differs by version): call it untyped.
    pool_class: Any = BlockingSentinelPool
    sentinel_pool: aioredis.ConnectionPool = pool_class(
        target.master, sentinel, max_connections=max_connections, timeout=pool_timeout_s, db=target.db,
        username=target.username, password=target.password, ssl=target.tls, **connection)
    return ShardClient(url, aioredis.Redis(connection_pool=sentinel_pool), sentinel_pool, sentinel)
