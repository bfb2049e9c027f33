"""Redis clients for the shards `--redis` names: a bounded blocking pool per shard, through Sentinel when asked.

A Sentinel shard asks its sentinels for the master before each new connection and drops idle connections to a
master that changed, so a failover is followed without a restart (redis-py's `SentinelConnectionPool`). A connection
that finds its server demoted to a replica (`READONLY`) is closed by redis-py and the next attempt asks again.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, ClusterPipeline, RedisCluster
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.exceptions import RedisClusterException, RedisError

from wsnode.redis_lane import LanedPool, RedisLane
from wsnode.redis_urls import SENTINEL_SCHEMES, parse_sentinel_url

# Asking a seed whether it is a cluster node must not hold the start up for long: a node that cannot tell (no seed
# answers yet) starts as a plain client, as it did before cluster support, and reports Redis DOWN until it answers.
_DETECT_TIMEOUT_S = 2.0


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
    lane: RedisLane | None = field(default=None)  # the push script's connection (redis_lane.py), when it can have one

    async def aclose(self) -> None:
        if self.lane is not None:
            await self.lane.aclose()
        await self.client.aclose()
        await self.pool.disconnect()
        if self.sentinel is not None:
            await self.sentinel.aclose()


def connect_shard(url: str, *, max_connections: int, pool_timeout_s: float, **connection: Any) -> ShardClient:
    """A client for one `--redis` item (connections are opened lazily, on first use)."""
    if not url.startswith(SENTINEL_SCHEMES):
        pool = LanedPool.from_url(url, max_connections=max_connections, timeout=pool_timeout_s, **connection)
        pool.lane = RedisLane.for_pool(pool)
        return ShardClient(url, aioredis.Redis(connection_pool=pool), pool, lane=pool.lane)
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


async def cluster_enabled(urls: list[str], **connection: Any) -> bool | None:
    """Whether the first `--redis` URL that answers is a Redis Cluster node (`INFO cluster`: `cluster_enabled:1`);
    None when none answers."""
    for url in urls:
        if url.startswith(SENTINEL_SCHEMES):
            return False
        client = aioredis.Redis.from_url(url, socket_connect_timeout=_DETECT_TIMEOUT_S,
                                         socket_timeout=_DETECT_TIMEOUT_S, **connection)
        try:
            info = await client.info("cluster")
        except (OSError, aioredis.RedisError):
            continue
        finally:
            await client.aclose()
        return str(info.get("cluster_enabled", 0)) == "1"
    return None


class ClusterUnavailable(RedisError):
    """No node of the cluster answers, or no master covers a slot: redis-py's RedisClusterException, which is not a
    RedisError, as one (so that every `except RedisError` of the node answers 503 for it, not 500)."""


class _NodePipeline(ClusterPipeline):
    async def execute(self, raise_on_error: bool = True, allow_redirections: bool = True) -> list[Any]:
        cluster: NodeCluster = self.cluster_client  # type: ignore[assignment]  # as NodeCluster.pipeline builds it
        async with cluster.connection_slot():
            try:
                return await super().execute(raise_on_error, allow_redirections)
            except RedisClusterException as exc:
                raise ClusterUnavailable(str(exc)) from exc


# Connections each master's pool may open beyond the callers' bound, for redis-py's own topology queries.
_SPARE_CONNECTIONS = 4
# Set while a task holds a place: redis-py's pipeline resends a moved command through the client's execute_command,
# and a multi-slot command runs as a pipeline; those nested calls use the place already held (waiting for a second
# one could deadlock once every place is held by such a caller).
_HOLDS_PLACE: ContextVar[bool] = ContextVar("wsnode_holds_redis_place", default=False)


class NodeCluster(RedisCluster):
    """RedisCluster whose errors are all RedisErrors (ClusterUnavailable), and whose callers wait for a connection.

    redis-py's asyncio cluster fails a command at once, with an empty MaxConnectionsError, when a master's pool is
    full: 200 concurrent connects on the default 64 were answered 503 "redis unavailable: " (`python -m bench.shards
    --cluster 3`), where a standalone Redis makes them wait (BlockingConnectionPool). Here at most `max_connections`
    commands or pipelines are in flight; each holds at most one connection per master, so no pool runs out, and a
    caller that waits longer than `pool_timeout_s` gets ClusterUnavailable naming the wait.
    """

    def __init__(self, *, max_connections: int, pool_timeout_s: float, **kwargs: Any) -> None:
        super().__init__(max_connections=max_connections + _SPARE_CONNECTIONS, **kwargs)
        self._in_flight = asyncio.Semaphore(max_connections)
        self._pool_timeout_s = pool_timeout_s

    @contextlib.asynccontextmanager
    async def connection_slot(self) -> AsyncIterator[None]:
        """Hold one of the `max_connections` places for a command, a pipeline or a script round trip."""
        if _HOLDS_PLACE.get():
            yield
            return
        try:
            async with asyncio.timeout(self._pool_timeout_s):
                await self._in_flight.acquire()
        except TimeoutError:
            raise ClusterUnavailable(f"no free Redis connection within {self._pool_timeout_s:g} s") from None
        held = _HOLDS_PLACE.set(True)
        try:
            yield
        finally:
            _HOLDS_PLACE.reset(held)
            self._in_flight.release()

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        async with self.connection_slot():
            try:
                return await super().execute_command(*args, **kwargs)
            except RedisClusterException as exc:
                raise ClusterUnavailable(str(exc)) from exc

    def pipeline(self, transaction: Any | None = None, shard_hint: Any | None = None) -> ClusterPipeline:
        if shard_hint:
            return super().pipeline(transaction, shard_hint)
        return _NodePipeline(self, transaction)  # type: ignore[abstract]  # as RedisCluster.pipeline builds it


class ClusterNodes:
    """The cluster nodes the pub/sub connection may use: the one that worked last first, then the rest the data client
    knows of (it refreshes them from CLUSTER SLOTS), then the seeds."""

    def __init__(self, seeds: list[tuple[str, int]], known: Callable[[], list[tuple[str, int]]]) -> None:
        self._seeds = seeds
        self._known = known
        self._last: tuple[str, int] | None = None

    def order(self) -> list[tuple[str, int]]:
        ordered = [*([self._last] if self._last else []), *self._known(), *self._seeds]
        return list(dict.fromkeys(ordered))

    def worked(self, node: tuple[str, int]) -> None:
        self._last = node


class FailoverConnection(aioredis.Connection):
    """A plain connection to any node of a cluster: when the node it used last does not answer, the next one."""

    def __init__(self, *, cluster_nodes: ClusterNodes, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._cluster_nodes = cluster_nodes

    async def _connect(self) -> None:
        failure: Exception = OSError("no Redis Cluster node is known")
        for host, port in self._cluster_nodes.order():
            self.host, self.port = host, port
            try:
                await super()._connect()  # type: ignore[no-untyped-call]  # untyped in redis-py
            except (OSError, TimeoutError) as exc:
                failure = exc
                continue
            self._cluster_nodes.worked((host, port))
            return
        raise failure


@dataclass
class ClusterClients:
    """A Redis Cluster's clients: data (RedisCluster, routed by slot) and pub/sub (a plain client to one node).

    Node messages of pushes, acks and evictions go by sharded pub/sub (cluster_pubsub.py: one connection per master,
    opened with `connection`). The plain client carries what is cluster-wide: broadcasts (a PUBLISH on any node
    reaches subscribers on every node, over the cluster bus), the node's own heartbeat, and the plain node channel
    that nodes of earlier versions PUBLISH to. When its node dies, the next connection goes to another one
    (FailoverConnection).
    """

    seeds: list[str]
    data: NodeCluster
    pubsub: aioredis.Redis
    connection: dict[str, Any] = field(default_factory=dict)

    async def aclose(self) -> None:
        await self.data.aclose()
        await self.pubsub.aclose()
        await self.pubsub.connection_pool.disconnect()


def connect_cluster(urls: list[str], *, max_connections: int, pool_timeout_s: float,
                    **connection: Any) -> ClusterClients:
    """Clients for a Redis Cluster whose seed nodes are `urls` (any of its nodes; the rest are discovered)."""
    first = dict(aioredis.Redis.from_url(urls[0]).connection_pool.connection_kwargs)
    seeds = [_host_port(url) for url in urls]
    data = NodeCluster(startup_nodes=[ClusterNode(host, port) for host, port in seeds],
                        username=first.get("username"), password=first.get("password"),
                        max_connections=max_connections, pool_timeout_s=pool_timeout_s, **connection)

    def known() -> list[tuple[str, int]]:
        return [(node.host, int(node.port)) for node in data.get_nodes()]

    pool = aioredis.ConnectionPool(connection_class=FailoverConnection, cluster_nodes=ClusterNodes(seeds, known),
                                   host=seeds[0][0], port=seeds[0][1], username=first.get("username"),
                                   password=first.get("password"), **connection)
    links = {"username": first.get("username"), "password": first.get("password"), **connection}
    links.pop("health_check_interval", None)  # a link PINGs on its own (cluster_pubsub.py)
    return ClusterClients(list(urls), data, aioredis.Redis(connection_pool=pool), links)


def _host_port(url: str) -> tuple[str, int]:
    kwargs = aioredis.Redis.from_url(url).connection_pool.connection_kwargs
    return str(kwargs.get("host", "127.0.0.1")), int(kwargs.get("port", 6379))
