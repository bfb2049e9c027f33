"""Sessions in Redis, refreshed per node, not per session: one script call per node every refresh period.

Records (under the prefix): `wsgate:user:U:sessions` (sorted set `<node>|<session>` scored by the session's start,
epoch ms), `wsgate:node:<id>:sessions` (hash session -> user: what a cleanup must remove), `wsgate:sessions` (sorted
set of every session id scored by start) and `wsgate:nodes` (sorted set node -> expiry, no TTL, so a dead node is
remembered until it is cleaned). None of these carries a per-session expiry (a removal Redis missed is retried).

Liveness is per node: `wsgate:node:<id>:alive` (PX = session TTL) is set by the node's heartbeat script once per
refresh period, so the refresh costs the same few commands whether the node holds 1 session or 15,000 (it cost 7
commands per session before: ~700,000 commands/s at 1M sessions, see docs/scaling.md). Presence, counts and routing
(the push and ack scripts in store.py) skip members whose node has no alive key, so a dead node's sessions vanish
from every read as soon as its key expires. The heartbeat script also removes the records of every node whose key
has expired: it runs atomically inside Redis, so two live nodes never clean one dead node twice or half, and a
SIGKILLed node's data leaves Redis within one refresh period of its expiry while any node is alive (or when the next
node starts). The key holds a per-process token: a node finds its own key missing (`SET ... GET` answers nil: Redis
restarted empty, or the node stalled past its TTL and was cleaned up) or left by an earlier process with its node id
(whose records the script then removes), and writes all its sessions again in pipelined batches; after a Redis or
pub/sub gap the node asks for that rewrite explicitly (`full=True`). Cost: a cleanup is O(sessions of the dead node)
inside one script (~2 commands each), paid once per dead node.

Sharded Redis (several `--redis` URLs, wsnode/sharding.py): a session's records live on its user's shard, so each
shard holds its own `wsgate:sessions`, `wsgate:nodes` and `wsgate:node:<id>:sessions|alive` for its users. The
heartbeat runs on every shard (each shard cleans the dead nodes it knows of) and `counts()` sums over the shards.
With one URL everything is as described above.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, cast

import redis.asyncio as aioredis

from wsnode import lua
from wsnode.keys import Keys
from wsnode.sharding import Shards

RedisShards = Shards[aioredis.Redis]

_HEARTBEAT_LUA = lua.source("heartbeat")

_REREGISTER_BATCH = 1000  # sessions per pipelined round trip when a node writes all its sessions again


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


def as_shards(client: aioredis.Redis | RedisShards) -> RedisShards:
    """`client` as shards (one plain client is one shard)."""
    return client if isinstance(client, Shards) else Shards([client])


async def gather_all(calls: list[Awaitable[Any]]) -> list[Any]:
    """Run `calls` (one per shard) to the end, all of them even when one fails; then raise the first error."""
    if len(calls) == 1:
        return [await calls[0]]
    results = await asyncio.gather(*calls, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return results


class SessionRegistry:
    """Records this node's sessions in Redis, keeps the node alive there and answers presence for any user."""

    def __init__(self, client: aioredis.Redis | RedisShards, keys: Keys, *, node_id: str, ttl_s: float) -> None:
        self._shards = as_shards(client)
        self._keys = keys
        self._node = node_id
        self._ttl_ms = int(ttl_s * 1000)
        self._heartbeats = [c.register_script(_HEARTBEAT_LUA) for c in self._shards.all]
        # Per shard: monotonic time until which this node's alive key is known to be there.
        self._alive_until = [0.0] * self._shards.count
        # Tells this process's alive key from one left by an earlier process with the same node id.
        self._token = uuid.uuid4().hex
        self._unremoved: list[tuple[str, str]] = []  # removals Redis missed, retried by the next refresh
        # Removals seen by each refresh in flight: one that rewrites the sessions from a snapshot must not bring
        # back a session that closed meanwhile (its removal may have reached Redis before the rewrite).
        self._watchers: list[list[tuple[str, str]]] = []

    @property
    def alive(self) -> bool:
        """Whether heartbeats succeeded recently enough that this node's alive key is still on every shard."""
        return time.monotonic() < min(self._alive_until)

    def alive_on(self, index: int) -> bool:
        """Whether this node's alive key is known to be on shard `index`."""
        return time.monotonic() < self._alive_until[index]

    def _member(self, session_id: str) -> str:
        return f"{self._node}|{session_id}"

    async def add(self, session_id: str, user: str) -> None:
        """Record a new session; after this (and while the node is alive), pushes for `user` are routed here."""
        now = _now_ms()
        async with self._shards.for_user(user).pipeline(transaction=True) as pipe:
            pipe.zadd(self._keys.user_sessions(user), {self._member(session_id): now})
            pipe.zadd(self._keys.all_sessions, {session_id: now})
            pipe.hset(self._keys.node_sessions(self._node), session_id, user)
            await pipe.execute()

    async def remove(self, sessions: Iterable[tuple[str, str]]) -> None:
        """Forget (session id, user) pairs of this node."""
        pairs = list(sessions)
        if not pairs:
            return
        for watcher in self._watchers:
            watcher.extend(pairs)
        try:
            await self._remove(pairs)
        except BaseException:
            # Records carry no expiry: a removal lost to a Redis error would stay while this node lives.
            self._unremoved.extend(pairs)
            raise

    def _by_shard(self, pairs: list[tuple[str, str]]) -> dict[int, list[tuple[str, str]]]:
        if self._shards.count == 1:
            return {0: pairs}
        out: dict[int, list[tuple[str, str]]] = {}
        for pair in pairs:
            out.setdefault(self._shards.index_of(pair[1]), []).append(pair)
        return out

    async def _remove(self, pairs: list[tuple[str, str]]) -> None:
        await gather_all([self._remove_on(index, part) for index, part in self._by_shard(pairs).items()])

    async def _remove_on(self, index: int, pairs: list[tuple[str, str]]) -> None:
        async with self._shards.all[index].pipeline(transaction=False) as pipe:
            for session_id, user in pairs:
                pipe.zrem(self._keys.user_sessions(user), self._member(session_id))
                pipe.zrem(self._keys.all_sessions, session_id)
            pipe.hdel(self._keys.node_sessions(self._node), *(session_id for session_id, _ in pairs))
            await pipe.execute()

    async def refresh(self, sessions: Iterable[tuple[str, str]], *, full: bool = False,
                      shard: int | None = None) -> set[int]:
        """Mark this node alive (one script call per shard) and clean dead nodes up; rewrite `sessions` if Redis lost
        them. Returns the shards where the sessions were written again (their pushes may have gone nowhere).

        `sessions` is only read when this node's alive key was missing on a shard or `full` is set (after a Redis
        gap); only the sessions of that shard's users are written there. `shard` limits all this to one shard.
        """
        indexes = range(self._shards.count) if shard is None else [shard]
        grouped: dict[int, list[tuple[str, str]]] | None = None
        rewritten: set[str] = set()

        def of_shard(index: int) -> list[tuple[str, str]]:
            nonlocal grouped
            if grouped is None:  # read only when some shard needs the rewrite (rare), then grouped once
                grouped = self._by_shard(list(sessions))
            part = grouped.get(index, [])
            rewritten.update(session_id for session_id, _ in part)
            return part

        removed: list[tuple[str, str]] = []
        self._watchers.append(removed)
        try:
            written = await gather_all([self._refresh_on(index, of_shard, full=full) for index in indexes])
        finally:
            # By identity: list.remove compares by value, and two refreshes' lists are often equal (both empty), so it
            # could drop the other refresh's list and then not find this one.
            self._watchers = [watcher for watcher in self._watchers if watcher is not removed]
            # Closed while the rewrite ran: removed once more below, after it (or by the next refresh).
            self._unremoved.extend(pair for pair in removed if pair[0] in rewritten)
        if self._unremoved:
            retry, self._unremoved = self._unremoved, []
            await self.remove(retry)
        return {index for index, rewritten in zip(indexes, written, strict=True) if rewritten}

    async def _refresh_on(self, index: int, of_shard: Callable[[int], list[tuple[str, str]]], *,
                          full: bool) -> bool:
        started = time.monotonic()
        had, _cleaned = cast(list[int], await self._heartbeats[index](
            keys=[], args=[self._keys.prefix, self._node, self._ttl_ms, self._token]))
        rewrite = full or not int(had)
        if rewrite:
            await self._register_all(index, of_shard(index))
        # Refreshes may overlap (slow replies): an older one answering last must not shorten what a newer one proved.
        self._alive_until[index] = max(self._alive_until[index], started + self._ttl_ms / 1000)
        return rewrite

    async def _register_all(self, index: int, pairs: list[tuple[str, str]]) -> None:
        now = _now_ms()
        for start in range(0, len(pairs), _REREGISTER_BATCH):
            async with self._shards.all[index].pipeline(transaction=False) as pipe:
                for session_id, user in pairs[start:start + _REREGISTER_BATCH]:
                    # NX keeps the start time of sessions Redis still holds.
                    pipe.zadd(self._keys.user_sessions(user), {self._member(session_id): now}, nx=True)
                    pipe.zadd(self._keys.all_sessions, {session_id: now}, nx=True)
                    pipe.hset(self._keys.node_sessions(self._node), session_id, user)
                await pipe.execute()

    async def leave(self) -> None:
        """Mark this node gone on every shard (its sessions are removed separately)."""
        self._alive_until = [0.0] * self._shards.count
        await gather_all([self._leave_on(client) for client in self._shards.all])

    async def _leave_on(self, client: aioredis.Redis) -> None:
        async with client.pipeline(transaction=False) as pipe:
            pipe.delete(self._keys.node_alive(self._node), self._keys.node_sessions(self._node))
            pipe.zrem(self._keys.nodes, self._node)
            await pipe.execute()

    async def _alive_nodes(self, client: aioredis.Redis, nodes: Iterable[str]) -> set[str]:
        ordered = sorted(set(nodes))
        if not ordered:
            return set()
        async with client.pipeline(transaction=False) as pipe:
            for node in ordered:
                pipe.exists(self._keys.node_alive(node))
            found = await pipe.execute()
        return {node for node, exists in zip(ordered, found, strict=True) if int(exists)}

    async def presence(self, user: str) -> list[SessionInfo]:
        """Sessions of `user` on every live node."""
        client = self._shards.for_user(user)
        raw_rows = cast(list[tuple[Any, float]],
                        await client.zrange(self._keys.user_sessions(user), 0, -1, withscores=True))
        rows = [(_text(raw).rpartition("|"), score) for raw, score in raw_rows]
        alive = await self._alive_nodes(client, (node for (node, _, _), _ in rows))
        return [SessionInfo(session=session_id, node=node, since_ms=int(score))
                for (node, _, session_id), score in rows if node in alive]

    async def nodes_of(self, user: str) -> set[str]:
        """Live nodes holding sessions of `user`."""
        client = self._shards.for_user(user)
        members = await client.zrange(self._keys.user_sessions(user), 0, -1)
        return await self._alive_nodes(client, (_text(raw).rpartition("|")[0] for raw in members))

    async def counts(self) -> tuple[int, int]:
        """(sessions on live nodes, live nodes) in the whole cluster: sessions summed over the shards, nodes alive
        on any shard."""
        per_shard = await gather_all([self._counts_on(client) for client in self._shards.all])
        nodes: set[str] = set()
        for _, alive in per_shard:
            nodes |= alive
        return sum(sessions for sessions, _ in per_shard), len(nodes)

    async def _counts_on(self, client: aioredis.Redis) -> tuple[int, set[str]]:
        nodes = await self._alive_nodes(client, (_text(raw) for raw in
                                                 await client.zrangebyscore(self._keys.nodes, _now_ms(), "+inf")))
        if not nodes:
            return 0, set()
        async with client.pipeline(transaction=False) as pipe:
            for node in sorted(nodes):
                pipe.hlen(self._keys.node_sessions(node))
            sizes = await pipe.execute()
        return sum(int(n) for n in sizes), nodes
