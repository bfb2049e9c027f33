"""RequestRateLimiter on a real Redis Cluster (3 masters, 3 replicas): the URL is recognised as a cluster, each
bucket's two keys live in one slot on one master, buckets spread over every master, MOVED and ASK during a slot
migration are followed without losing the bucket, and a replica promoted after its master's SIGKILL takes over.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import redis
from redis.crc import key_slot

from gateway.model import RateLimit, RequestView
from gateway.ratelimit.bucket import bucket_keys
from gateway.ratelimit.redis import DetectedRedis, RedisRateLimiter, redis_connection
from harness import ProcessGroup, free_port, unique_prefix
from harness.redis_cluster import OwnCluster, provide_redis_cluster
from tests.functional.test_gateway_ratelimit import BURST, burst, check_exactly_burst, next_second, routes
from tests.gateway.procs import start_gateway_proc, start_upstream_proc
from tests.gateway.ratelimit.test_ratelimit_redis import T0, Clock, remaining

LIMIT = RateLimit(replenish_rate=1, burst_capacity=10, requested_tokens=1, key="header:X-User")


def caller(name: str) -> RequestView:
    return RequestView("GET", "/", headers=(("X-User", name),), remote_addr="10.0.0.1")


@pytest.fixture
async def cluster_limiter(redis_cluster: OwnCluster) -> AsyncIterator[Callable[..., RedisRateLimiter]]:
    """Limiters on the session's cluster, each with its own connection (as separate gateways have), one prefix."""
    prefix = unique_prefix("rl")
    connections = []

    def make(clock: Clock, *, url: str | None = None, **kwargs: object) -> RedisRateLimiter:
        connection = redis_connection(url or redis_cluster.info.url)
        connections.append(connection)
        return RedisRateLimiter(connection.client, key_prefix=prefix, clock=clock, **kwargs)  # type: ignore[arg-type]

    yield make
    for connection in connections:
        await connection.aclose()


@contextlib.asynccontextmanager
async def own_cluster_limiter(tmp_path: Path, **kwargs: Any) -> AsyncIterator[tuple[OwnCluster, RedisRateLimiter]]:
    """A cluster of the test's own (for tests that kill or reshard: the session's cluster stays as it is) and a
    fail-closed limiter on it."""
    with provide_redis_cluster(tmp_path) as cluster:
        connection = redis_connection(cluster.info.url)
        try:
            yield cluster, RedisRateLimiter(connection.client, key_prefix=unique_prefix("rl"), clock=Clock(T0),
                                            fail_open=False, **kwargs)
        finally:
            await connection.aclose()


def keys_on(port: int, pattern: str) -> set[str]:
    """The keys matching `pattern` that the node at `port` itself holds (a plain client: no redirection)."""
    client = redis.Redis(host="127.0.0.1", port=port, decode_responses=True)
    try:
        return set(client.scan_iter(match=pattern, count=1000))
    finally:
        client.close()


async def decisions(limiter: RedisRateLimiter, request: RequestView, count: int) -> list[bool]:
    return [(await limiter.check("route", LIMIT, request)).allowed for _ in range(count)]


async def test_cluster_is_detected_and_the_bucket_holds(cluster_limiter: Callable[..., RedisRateLimiter]) -> None:
    clock = Clock(T0)
    limiter = cluster_limiter(clock, fail_open=False)
    allowed = await decisions(limiter, caller("alice"), 15)
    assert allowed == [True] * 10 + [False] * 5
    assert isinstance(limiter._redis, DetectedRedis) and limiter._redis.mode == "cluster"
    clock.now_s += 3  # replenishRate 1: three tokens back
    assert await decisions(limiter, caller("alice"), 4) == [True, True, True, False]


async def test_two_gateways_share_each_bucket_atomically(cluster_limiter: Callable[..., RedisRateLimiter]) -> None:
    clock = Clock(T0)
    one, two = cluster_limiter(clock, fail_open=False), cluster_limiter(clock, fail_open=False)
    results = await asyncio.gather(*(limiter.check("route", LIMIT, caller("bob"))
                                     for _ in range(20) for limiter in (one, two)))
    assert sum(result.allowed for result in results) == 10
    assert sorted(remaining(result) for result in results if result.allowed) == list(range(10))


async def test_buckets_spread_over_every_master_with_both_keys_together(
        redis_cluster: OwnCluster, cluster_limiter: Callable[..., RedisRateLimiter]) -> None:
    limiter = cluster_limiter(Clock(T0), fail_open=False)
    names = [f"user-{index}" for index in range(90)]
    for name in names:
        assert (await limiter.check("route", LIMIT, caller(name))).allowed
    prefix = limiter._key_prefix
    held = {port: keys_on(port, f"{prefix}*") for port in redis_cluster.master_ports()}
    assert all(held.values()), {port: len(keys) for port, keys in held.items()}
    assert sum(len(keys) for keys in held.values()) == 2 * len(names)
    for name in names:
        tokens, timestamp = bucket_keys("route", name, key_prefix=prefix)
        assert [port for port, keys in held.items() if tokens in keys] \
            == [port for port, keys in held.items() if timestamp in keys]


async def test_a_seed_list_with_a_dead_first_seed_finds_the_cluster(
        redis_cluster: OwnCluster, cluster_limiter: Callable[..., RedisRateLimiter]) -> None:
    seeds = f"redis://127.0.0.1:{free_port()}/0,{redis_cluster.info.seeds}"
    limiter = cluster_limiter(Clock(T0), url=seeds, fail_open=False)
    assert await decisions(limiter, caller("carol"), 11) == [True] * 10 + [False]
    assert isinstance(limiter._redis, DetectedRedis) and limiter._redis.mode == "cluster"


def _owner(cluster: OwnCluster, slot: int) -> tuple[str, int]:
    for node in cluster.topology():
        if node.role == "master" and any(first <= slot <= last for first, last in node.slots):
            return node.node_id, node.port
    raise AssertionError(f"no master serves slot {slot}")


async def test_moved_and_ask_during_a_slot_migration_keep_the_bucket(
        redis_cluster: OwnCluster, cluster_limiter: Callable[..., RedisRateLimiter]) -> None:
    limiter = cluster_limiter(Clock(T0), fail_open=False)
    tokens, timestamp = bucket_keys("route", "dave", key_prefix=limiter._key_prefix)
    slot = key_slot(tokens.encode())
    assert await decisions(limiter, caller("dave"), 3) == [True] * 3
    source_id, source = _owner(redis_cluster, slot)
    target_id, target = next((node.node_id, node.port) for node in redis_cluster.topology()
                             if node.role == "master" and node.port != source)
    src, dst = (redis.Redis(host="127.0.0.1", port=port) for port in (source, target))
    try:
        dst.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", source_id)
        src.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", target_id)
        src.execute_command("MIGRATE", "127.0.0.1", target, "", 0, 5000, "KEYS", tokens, timestamp)
        # Keys gone from the source while the slot migrates: the source answers ASK, the client asks the target.
        assert await decisions(limiter, caller("dave"), 3) == [True] * 3
        for port in redis_cluster.master_ports():
            redis.Redis(host="127.0.0.1", port=port).execute_command("CLUSTER", "SETSLOT", slot, "NODE", target_id)
        # The slot now belongs to the target: the source answers MOVED and the client learns the new owner.
        assert await decisions(limiter, caller("dave"), 5) == [True] * 4 + [False]
        assert keys_on(target, f"{limiter._key_prefix}*dave*") == {tokens, timestamp}
        assert keys_on(source, f"{limiter._key_prefix}*dave*") == set()
    finally:
        src.close()
        dst.close()
    redis_cluster.wait_ready()


@pytest.mark.slow
async def test_replica_takes_over_after_its_master_is_killed(tmp_path: Path) -> None:
    async with own_cluster_limiter(tmp_path, retry_interval_s=0) as (cluster, limiter):
        tokens, _ = bucket_keys("route", "erin", key_prefix=limiter._key_prefix)
        assert await decisions(limiter, caller("erin"), 4) == [True] * 4
        _, master = _owner(cluster, key_slot(tokens.encode()))
        # The replica must hold the 4 takes before the crash, or the bucket would rightly be full again.
        assert redis.Redis(host="127.0.0.1", port=master).execute_command("WAIT", 1, 5000) == 1
        cluster.kill(master)
        cluster.wait_ready(timeout_s=30)
        new_master = _owner(cluster, key_slot(tokens.encode()))[1]
        assert new_master != master
        results: list[bool] = []
        async with asyncio.timeout(20):
            while not results or not results[-1]:
                decision = await limiter.check("route", LIMIT, caller("erin"))
                results.append(decision.allowed)
                if not decision.allowed:
                    assert decision.status == 503, decision  # fail-closed while the client finds the new master
                    await asyncio.sleep(0.05)  # polling the failover, with the deadline above
        assert await decisions(limiter, caller("erin"), 6) == [True] * 5 + [False]


async def test_gateway_processes_on_the_cluster_share_buckets(
        procs: ProcessGroup, tmp_path: Path, redis_cluster: OwnCluster) -> None:
    prefix = unique_prefix("gw")
    upstream = start_upstream_proc(procs, "upstream")
    by_env = tmp_path / "env.yaml"
    by_env.write_text(routes(upstream))
    by_file = tmp_path / "file.yaml"
    by_file.write_text(routes(upstream, f'wsgate:\n  redis: {{url: "{redis_cluster.info.seeds}", '
                                        f'prefix: "{prefix}"}}\n'))
    _, one = start_gateway_proc(procs, by_env, name="gateway-env",
                                env={"REDIS_URL": redis_cluster.info.url, "WSGATE_REDIS_PREFIX": prefix})
    _, two = start_gateway_proc(procs, by_file, name="gateway-file")
    await next_second()
    results, seconds = await burst([one, two], "/client/x", 4 * BURST)
    check_exactly_burst(results, seconds)
    assert {i % 2 for i, (status, _) in enumerate(results) if status == 429} == {0, 1}
    users = [f"u{index}" for index in range(30)]
    await next_second()
    outcomes = await asyncio.gather(*(burst([one, two], "/header/x", BURST + 1, headers={"X-Key": user})
                                      for user in users))
    for results, seconds in outcomes:
        check_exactly_burst(results, seconds)
    held = {port: keys_on(port, f"{prefix}*") for port in redis_cluster.master_ports()}
    assert all(held.values()), {port: len(keys) for port, keys in held.items()}


@pytest.mark.slow
async def test_a_cluster_gone_entirely_is_decided_by_the_policy(tmp_path: Path) -> None:
    with provide_redis_cluster(tmp_path) as cluster:
        connections = [redis_connection(cluster.info.url) for _ in range(3)]
        closed, open_, fresh = (RedisRateLimiter(connection.client, key_prefix=unique_prefix("rl"), clock=Clock(T0),
                                                 fail_open=policy, retry_interval_s=0)
                                for connection, policy in zip(connections, (False, True, False), strict=True))
        try:
            assert (await closed.check("route", LIMIT, caller("fay"))).allowed
            assert (await open_.check("route", LIMIT, caller("fay"))).allowed
            # `fresh` learnt only that the URL is a cluster: its RedisCluster has not met any node yet.
            assert isinstance(fresh._redis, DetectedRedis)
            await fresh._redis.for_key("x")
            cluster.stop()
            for limiter, allowed, status in ((closed, False, 503), (open_, True, 200), (fresh, False, 503)):
                decision = await limiter.check("route", LIMIT, caller("fay"))
                assert (decision.allowed, decision.status) == (allowed, status)
        finally:
            for connection in connections:
                await connection.aclose()


@pytest.mark.slow
async def test_buckets_hold_through_a_reshard_under_traffic(tmp_path: Path) -> None:
    async with own_cluster_limiter(tmp_path, timeout_s=5.0) as (cluster, limiter):
        names = [f"mover-{index}" for index in range(200)]
        for name in names:
            assert await decisions(limiter, caller(name), 5) == [True] * 5
        source, target = cluster.master_ports()[:2]
        slots_of = {name: key_slot(bucket_keys("route", name, key_prefix=limiter._key_prefix)[0].encode())
                    for name in names}
        on_source = {name for name in names if _owner(cluster, slots_of[name])[1] == source}
        reshard = asyncio.create_task(asyncio.to_thread(cluster.reshard, source, target, 2000))
        during: dict[str, list[int]] = {name: [] for name in names}
        while not reshard.done():
            for name in names[:50]:  # a fixed part of the users keeps asking while slots move
                decision = await limiter.check("route", LIMIT, caller(name))
                during[name].append(decision.status)
        await reshard
        moved = {name for name in on_source if _owner(cluster, slots_of[name])[1] == target}
        assert moved and all(during[name] for name in names[:50]), (len(moved), during[names[0]])
        for name in names:
            statuses = during[name] + [(await limiter.check("route", LIMIT, caller(name))).status
                                       for _ in range(12)]
            # No request failed (503) and each bucket still held exactly its 10 tokens: 5 before, 5 after.
            assert 503 not in statuses, (name, statuses)
            assert statuses.count(200) == 5, (name, statuses)
