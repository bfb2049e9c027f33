"""Sessions in Redis: session -> (user, node, since), user -> sessions, with expiry the owning node refreshes.

A node that dies stops refreshing: its session hashes expire and its members of the per-user sorted sets fall out of
every read (they are scored by expiry) and are trimmed by the next refresh of any node.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis

from wsnode.keys import Keys


@dataclass(frozen=True, slots=True)
class SessionInfo:
    """One session as presence reports it."""

    session: str
    node: str
    since_ms: int


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _now_ms() -> int:
    return int(time.time() * 1000)


class SessionRegistry:
    """Records this node's sessions in Redis and answers presence for any user."""

    def __init__(self, client: aioredis.Redis, keys: Keys, *, node_id: str, ttl_s: float) -> None:
        self._redis = client
        self._keys = keys
        self._node = node_id
        self._ttl_ms = int(ttl_s * 1000)

    def _member(self, session_id: str) -> str:
        return f"{self._node}|{session_id}"

    async def add(self, session_id: str, user: str) -> None:
        """Record a new session; after this, pushes for `user` are routed to this node."""
        now = _now_ms()
        expires = now + self._ttl_ms
        user_key = self._keys.user_sessions(user)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(self._keys.session(session_id), mapping={"user": user, "node": self._node, "since": now})
            pipe.pexpire(self._keys.session(session_id), self._ttl_ms)
            pipe.zremrangebyscore(user_key, "-inf", now)
            pipe.zadd(user_key, {self._member(session_id): expires})
            pipe.pexpire(user_key, self._ttl_ms)
            pipe.zadd(self._keys.all_sessions, {session_id: expires})
            pipe.pexpire(self._keys.all_sessions, self._ttl_ms)
            await pipe.execute()

    async def remove(self, sessions: Iterable[tuple[str, str]]) -> None:
        """Forget (session id, user) pairs of this node."""
        pairs = list(sessions)
        if not pairs:
            return
        async with self._redis.pipeline(transaction=False) as pipe:
            for session_id, user in pairs:
                pipe.delete(self._keys.session(session_id))
                pipe.zrem(self._keys.user_sessions(user), self._member(session_id))
                pipe.zrem(self._keys.all_sessions, session_id)
            await pipe.execute()

    async def refresh(self, sessions: Iterable[tuple[str, str]]) -> None:
        """Push the expiry of this node's sessions forward and trim expired members; also marks the node alive."""
        now = _now_ms()
        expires = now + self._ttl_ms
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.zadd(self._keys.nodes, {self._node: expires})
            pipe.zremrangebyscore(self._keys.nodes, "-inf", now)
            pipe.pexpire(self._keys.nodes, self._ttl_ms)
            pipe.zremrangebyscore(self._keys.all_sessions, "-inf", now)
            pipe.pexpire(self._keys.all_sessions, self._ttl_ms)
            for session_id, user in sessions:
                user_key = self._keys.user_sessions(user)
                # hset/hsetnx recreate the hash when Redis lost it (a restart without persistence).
                pipe.hset(self._keys.session(session_id), mapping={"user": user, "node": self._node})
                pipe.hsetnx(self._keys.session(session_id), "since", now)
                pipe.pexpire(self._keys.session(session_id), self._ttl_ms)
                pipe.zadd(user_key, {self._member(session_id): expires})
                pipe.zremrangebyscore(user_key, "-inf", now)
                pipe.pexpire(user_key, self._ttl_ms)
                pipe.zadd(self._keys.all_sessions, {session_id: expires})
            await pipe.execute()

    async def leave(self) -> None:
        """Mark this node gone (its sessions are removed separately)."""
        await self._redis.zrem(self._keys.nodes, self._node)

    async def presence(self, user: str) -> list[SessionInfo]:
        """Live sessions of `user` on every node."""
        members = [_text(raw).rpartition("|") for raw in
                   await self._redis.zrangebyscore(self._keys.user_sessions(user), _now_ms(), "+inf")]
        if not members:
            return []
        async with self._redis.pipeline(transaction=False) as pipe:
            for _node, _, session_id in members:
                pipe.hget(self._keys.session(session_id), "since")
            since = await pipe.execute()
        return [SessionInfo(session=session_id, node=node, since_ms=int(ms or 0))
                for (node, _, session_id), ms in zip(members, since, strict=True)]

    async def nodes_of(self, user: str) -> set[str]:
        """Nodes holding live sessions of `user`."""
        members = await self._redis.zrangebyscore(self._keys.user_sessions(user), _now_ms(), "+inf")
        return {_text(raw).rpartition("|")[0] for raw in members}

    async def counts(self) -> tuple[int, int]:
        """(live sessions, live nodes) in the whole cluster."""
        now = _now_ms()
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.zcount(self._keys.all_sessions, now, "+inf")
            pipe.zcount(self._keys.nodes, now, "+inf")
            sessions, nodes = await pipe.execute()
        return int(sessions), int(nodes)
