"""The session registry's refresh costs Redis a fixed number of commands per node, whatever its session count.

Each test runs its own redis-server (INFO commandstats and FLUSHALL must not see or touch other tests' traffic).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator

import redis.asyncio as aioredis

from wsnode.keys import Keys
from wsnode.presence import SessionRegistry


async def _commands(client: aioredis.Redis) -> int:
    """Commands Redis has executed since the last CONFIG RESETSTAT, not counting the INFO that reads them."""
    stats = await client.info("commandstats")
    return sum(int(v["calls"]) for k, v in stats.items() if not k.startswith(("cmdstat_info", "cmdstat_config")))


async def _eventually(check: Callable[[], Awaitable[bool]], *, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not await check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


async def _registry_with(client: aioredis.Redis, prefix: str, node: str, sessions: int, *,
                         ttl_s: float = 30.0) -> tuple[SessionRegistry, list[tuple[str, str]]]:
    registry = SessionRegistry(client, Keys(prefix), node_id=node, ttl_s=ttl_s)
    pairs = [(f"{node}-s{i}", f"user{i % 7}") for i in range(sessions)]
    await registry.refresh(pairs)  # the first heartbeat finds no alive key and writes the sessions
    return registry, pairs


async def test_registry_refresh_commands_do_not_grow_with_sessions(own_redis: aioredis.Redis) -> None:
    periods = 5
    per_refresh: dict[int, float] = {}
    for count in (1, 50, 1000):
        registry, pairs = await _registry_with(own_redis, f"n{count}:", "node-a", count)
        await own_redis.config_resetstat()
        for _ in range(periods):
            await registry.refresh(pairs)
        per_refresh[count] = await _commands(own_redis) / periods
        assert {s.session for s in await registry.presence("user0")} == {s for s, u in pairs if u == "user0"}
    # One EVALSHA running TIME, SET, ZADD, ZRANGEBYSCORE: the same for 1 and 1,000 sessions.
    assert per_refresh == {1: 5.0, 50: 5.0, 1000: 5.0}


async def test_registry_dead_node_sessions_leave_redis_after_expiry(own_redis: aioredis.Redis) -> None:
    prefix = "dead:"
    keys = Keys(prefix)
    _, doomed_pairs = await _registry_with(own_redis, prefix, "node-a", 3, ttl_s=0.3)
    kept, kept_pairs = await _registry_with(own_redis, prefix, "node-b", 2)
    assert await kept.counts() == (5, 2)

    async def expired() -> bool:
        return not await own_redis.exists(keys.node_alive("node-a"))

    await _eventually(expired)
    # Before any cleanup: invisible to presence, routing and counts.
    assert [s.node for s in await kept.presence("user0")] == ["node-b"]
    assert await kept.nodes_of("user2") == set()
    assert await kept.counts() == (2, 1)
    await kept.refresh(kept_pairs)  # a live node's heartbeat removes the dead node's records
    assert await own_redis.zrange(keys.all_sessions, 0, -1) == sorted(s for s, _ in kept_pairs)
    assert await own_redis.zrange(keys.nodes, 0, -1) == ["node-b"]
    assert not await own_redis.exists(keys.node_sessions("node-a"))
    for _, user in doomed_pairs:
        assert all(str(m).startswith("node-b|") for m in await own_redis.zrange(keys.user_sessions(user), 0, -1))


async def test_registry_sessions_are_written_again_after_redis_lost_them(own_redis: aioredis.Redis) -> None:
    registry, pairs = await _registry_with(own_redis, "lost:", "node-a", 3)
    await own_redis.flushall()
    assert await registry.presence("user1") == []
    await registry.refresh(pairs)  # the alive key is missing: the node writes every session again
    assert [s.session for s in await registry.presence("user1")] == ["node-a-s1"]
    assert await registry.counts() == (3, 1)


async def test_registry_restarted_node_with_the_same_id_drops_the_sessions_of_its_predecessor(
        own_redis: aioredis.Redis) -> None:
    await _registry_with(own_redis, "again:", "node-a", 3)  # the first process dies without cleaning up
    successor, _ = await _registry_with(own_redis, "again:", "node-a", 0)  # its alive key has not expired
    assert await successor.presence("user1") == []
    assert await successor.counts() == (0, 1)
    await successor.add("new", "user1")
    assert [s.session for s in await successor.presence("user1")] == ["new"]
    assert await own_redis.zrange("again:wsgate:sessions", 0, -1) == ["new"]


async def test_registry_add_and_remove_are_seen_at_once(own_redis: aioredis.Redis) -> None:
    registry, _ = await _registry_with(own_redis, "live:", "node-a", 0)
    await registry.add("fresh", "zoe")
    assert [(s.session, s.node) for s in await registry.presence("zoe")] == [("fresh", "node-a")]
    assert await registry.nodes_of("zoe") == {"node-a"}
    await registry.remove([("fresh", "zoe")])
    assert await registry.presence("zoe") == []
    assert await registry.counts() == (0, 1)


async def test_refresh_rewrite_does_not_bring_back_a_session_closed_meanwhile(own_redis: aioredis.Redis) -> None:
    """A full rewrite works from a snapshot in batches; a session closing during it must stay removed."""
    keys = Keys("rw:")
    registry = SessionRegistry(own_redis, keys, node_id="n1", ttl_s=30)
    await asyncio.gather(own_redis.ping(), own_redis.ping())  # two pooled connections: the removal needs no connect
    pairs = [(f"s{i}", f"u{i}") for i in range(2500)]  # three rewrite batches
    closing = pairs[-1]  # written back by the last batch, after its removal has reached Redis
    removals: list[asyncio.Task[None]] = []

    class Snapshot:
        """The node's sessions as the refresh reads them; the last one closes as the rewrite starts."""

        def __iter__(self) -> Iterator[tuple[str, str]]:
            removals.append(asyncio.ensure_future(registry.remove([closing])))
            return iter(pairs)

    await registry.refresh(Snapshot(), full=True)
    await removals[0]
    assert await own_redis.hget(keys.node_sessions("n1"), closing[0]) is None
    assert await own_redis.zscore(keys.user_sessions(closing[1]), f"n1|{closing[0]}") is None
    assert await own_redis.zscore(keys.all_sessions, closing[0]) is None
    assert await own_redis.hget(keys.node_sessions("n1"), pairs[0][0]) == pairs[0][1]
