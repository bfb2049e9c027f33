"""On a Redis Cluster a burst of callers waits for a connection instead of failing (real 3+3 cluster).

redis-py's asyncio RedisCluster fails a command at once with an empty MaxConnectionsError when a master's pool is
full; the node's NodeCluster bounds the calls in flight instead, as BlockingConnectionPool does for one server.
"""

from __future__ import annotations

import asyncio

import pytest
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.exceptions import MaxConnectionsError

from harness.redis_cluster import OwnCluster
from wsnode.redis_connect import ClusterUnavailable, connect_cluster

BURST = 200


def _startup(cluster: OwnCluster) -> list[ClusterNode]:
    info = cluster.info
    return [ClusterNode(info.host, port) for port in info.ports]


async def test_plain_redis_cluster_fails_a_burst_beyond_its_pool(redis_cluster: OwnCluster) -> None:
    # The behaviour NodeCluster exists for: without it, the burst below fails.
    plain = RedisCluster(startup_nodes=_startup(redis_cluster), max_connections=4)
    try:
        results = await asyncio.gather(*(plain.get(f"pool-test:{i}") for i in range(BURST)), return_exceptions=True)
    finally:
        await plain.aclose()
    assert any(isinstance(result, MaxConnectionsError) for result in results)


async def test_node_cluster_makes_a_burst_wait_for_a_connection(redis_cluster: OwnCluster) -> None:
    clients = connect_cluster(redis_cluster.info.seeds.split(","), max_connections=4, pool_timeout_s=10.0)
    try:
        async def one(i: int) -> list[object]:
            async with clients.data.pipeline(transaction=False) as pipe:
                pipe.set(f"pool-test:{{u:{i}}}:a", i)
                pipe.get(f"pool-test:{{u:{i}}}:a")
                replies: list[object] = await pipe.execute()
            await clients.data.delete(f"pool-test:{{u:{i}}}:a")
            return replies

        results = await asyncio.gather(*(one(i) for i in range(BURST)), return_exceptions=True)
        assert [result for result in results if isinstance(result, BaseException)] == []
        assert results == [[True, str(i).encode()] for i in range(BURST)]
    finally:
        await clients.aclose()


async def test_a_caller_that_waits_too_long_is_told_why(redis_cluster: OwnCluster) -> None:
    clients = connect_cluster(redis_cluster.info.seeds.split(","), max_connections=1, pool_timeout_s=0.2)
    try:
        held, release = asyncio.Event(), asyncio.Event()

        async def hold() -> None:
            async with clients.data.connection_slot():
                held.set()
                await release.wait()

        holder = asyncio.get_running_loop().create_task(hold())
        await held.wait()
        with pytest.raises(ClusterUnavailable, match=r"no free Redis connection within 0\.2 s"):
            await clients.data.get("pool-test:x")
        release.set()
        await holder
        assert await clients.data.get("pool-test:x") is None
    finally:
        await clients.aclose()
