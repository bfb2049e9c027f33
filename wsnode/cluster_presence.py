"""Sessions on a Redis Cluster: the records of presence.py, written so that no command or script crosses slots.

A user's session set is in the user's slot (keys.py); `wsgate:sessions`, `wsgate:nodes` and each node's
`wsgate:node:<id>:sessions|alive` are global keys, each in the slot its name hashes to. The heartbeat script of
presence.py reads and writes all of these at once, which a cluster refuses; here the heartbeat is the same steps as
separate commands (RedisCluster sends each to its slot's master). They are not atomic, but each is idempotent: two
live nodes cleaning one dead node at once remove the same members, and a removal that fails half way is done again
by the next heartbeat, since the dead node stays in `wsgate:nodes` until its records are gone.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from redis.asyncio.cluster import RedisCluster

from wsnode.keys import Keys
from wsnode.presence import SessionRegistry, _now_ms, _text


class ClusterSessionRegistry(SessionRegistry):
    """SessionRegistry over one RedisCluster client."""

    def __init__(self, cluster: RedisCluster, keys: Keys, *, node_id: str, ttl_s: float) -> None:
        client: Any = cluster
        super().__init__(client, keys, node_id=node_id, ttl_s=ttl_s)
        self._cluster = cluster

    async def add(self, session_id: str, user: str) -> None:
        now = _now_ms()
        # Three slots: no transaction. The user's set is written first; the node's index, which a cleanup reads,
        # last, so a node that dies in between leaves at most a member that its liveness check hides.
        async with self._cluster.pipeline(transaction=False) as pipe:
            pipe.zadd(self._keys.user_sessions(user), {self._member(session_id): now})
            pipe.zadd(self._keys.all_sessions, {session_id: now})
            pipe.hset(self._keys.node_sessions(self._node), session_id, user)
            await pipe.execute()

    async def _refresh_on(self, index: int, of_shard: Callable[[int], list[tuple[str, str]]], *,
                          full: bool) -> bool:
        started = time.monotonic()
        had = await self._cluster.set(self._keys.node_alive(self._node), self._token, px=self._ttl_ms, get=True)
        if had is not None and _text(had) != self._token:
            await self._clean(self._node)  # an earlier process with this node id died before its key expired
        now = _now_ms()
        await self._cluster.zadd(self._keys.nodes, {self._node: now + self._ttl_ms})
        for raw in await self._cluster.zrangebyscore(self._keys.nodes, "-inf", now):
            dead = _text(raw)
            if not await self._cluster.exists(self._keys.node_alive(dead)):
                await self._clean(dead)
                await self._cluster.zrem(self._keys.nodes, dead)
        rewrite = full or had is None or _text(had) != self._token
        if rewrite:
            await self._register_all(index, of_shard(index))
        self._alive_until[index] = max(self._alive_until[index], started + self._ttl_ms / 1000)
        return rewrite

    async def _clean(self, node: str) -> None:
        index = self._keys.node_sessions(node)
        sessions = await self._cluster.hgetall(index)
        if sessions:
            async with self._cluster.pipeline(transaction=False) as pipe:
                for session_id, user in sessions.items():
                    pipe.zrem(self._keys.user_sessions(_text(user)), f"{node}|{_text(session_id)}")
                    pipe.zrem(self._keys.all_sessions, _text(session_id))
                await pipe.execute()
        await self._cluster.delete(index)

    async def leave(self) -> None:
        self._alive_until = [0.0] * self._shards.count
        # One key per DEL: the two keys are in different slots.
        async with self._cluster.pipeline(transaction=False) as pipe:
            pipe.delete(self._keys.node_alive(self._node))
            pipe.delete(self._keys.node_sessions(self._node))
            pipe.zrem(self._keys.nodes, self._node)
            await pipe.execute()
