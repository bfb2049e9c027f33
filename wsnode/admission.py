"""A connect's Redis work in one script call (wsnode/lua/connect.lua) on the user's shard, one round trip.

It was three round trips of 13 commands (issue 19): the revocation check and the user's session count (a pipeline),
the session's records (`MULTI` `ZADD` `ZADD` `HSET` `EXEC`) and the replay's reads (`MULTI` `GET` `HKEYS`
`ZRANGEBYSCORE` `HGETALL` `EXEC`). Now it is one `EVALSHA` running 7 commands (`HKEYS` as well when the user has
stored frames and no `since`). The records and reads are the same as presence.py's `add` and store.py's `replay`;
a revoked token is refused before anything is written.

On a Redis Cluster the script touches only the user's slot (their keys carry the tag `{u:<user>}`, keys.py); the two
global records (`wsgate:sessions`, the node's session index) are in other slots, so they follow in a second round
trip, after the user's set, in the order cluster_presence.py's `add` keeps.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, cast

from redis.asyncio.cluster import RedisCluster

from wsnode import lua
from wsnode.keys import Keys
from wsnode.presence import RedisShards
from wsnode.store import Replay, counts_of, replay_of

_CONNECT_LUA = lua.source("connect")
# The user's keys the script may touch (suffixes of keys.py's user_base), declared in KEYS: a Cluster routes the call
# by them (and answers ASK/TRYAGAIN before the script starts while the slot migrates, as cluster_store.py explains).
_USER_KEYS = (":revoked", ":seq", ":sessions", ":msgs", ":unacked", ":unread")


@dataclass(frozen=True, slots=True)
class Admission:
    """A registered session: the user's sessions before it (0 when not counted) and its replay."""

    held: int
    replay: Replay


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def admission_of(reply: Any, since: int | None) -> Admission | None:
    """The script's reply as an Admission; None when the token was revoked (nothing was written)."""
    items = cast(list[Any], reply)
    if not int(items[0]):
        return None
    _, held, seq, rows, unread = items
    # Scores come as Redis prints doubles; ids are whole numbers below 2**53, so float() is exact.
    frames = [(int(float(_text(rows[i + 1]))), _text(rows[i])) for i in range(0, len(rows), 2)]
    counts = counts_of({unread[i]: unread[i + 1] for i in range(0, len(unread), 2)})
    return Admission(held=int(held), replay=replay_of(since, int(seq or 0), frames, counts))


class Admitter:
    """Registers a session and reads its replay: one script call on the user's shard."""

    def __init__(self, shards: RedisShards, keys: Keys, *, node_id: str) -> None:
        self._shards = shards
        self._keys = keys
        self._node = node_id
        # Not batched across concurrent connects (script_batch.py) although that would save system calls in a
        # burst: each connect on a connection of its own keeps the pool as warm as the connects were concurrent,
        # and a node whose Redis answers slowly needs warm connections for its refreshes (opening one costs round
        # trips; tests/functional/test_fault_redis.py's slow replies let presence lapse with a batched connect).
        self._scripts = [client.register_script(_CONNECT_LUA) for client in shards.all]

    def _args(self, session_id: str, user: str, *, since: int | None, check: bool, issued_at: float | None,
              with_global: bool) -> list[str | int]:
        keys = self._keys
        return [keys.user_base(user), keys.all_sessions if with_global else "",
                keys.node_sessions(self._node) if with_global else "", f"{self._node}|{session_id}", session_id,
                user, int(time.time() * 1000), "1" if check else "0", "" if issued_at is None else repr(issued_at),
                "" if since is None else since]

    def _declared(self, user: str) -> list[str]:
        """The user's keys the script may touch (it builds their names from ARGV itself)."""
        base = self._keys.user_base(user)
        return [base + suffix for suffix in _USER_KEYS]

    async def open(self, session_id: str, user: str, *, since: int | None, check: bool,
                   issued_at: float | None) -> Admission | None:
        """Register `session_id` of `user` and read its replay after `since`; with `check`, first refuse (None) a
        token issued at `issued_at` that the user's revocation covers, and count the user's sessions."""
        script = self._scripts[self._shards.index_of(user)]
        args = self._args(session_id, user, since=since, check=check, issued_at=issued_at, with_global=True)
        return admission_of(await script(keys=self._declared(user), args=args), since)


class ClusterAdmitter(Admitter):
    """Admitter on a Redis Cluster: the script on the user's slot, then the global records."""

    def __init__(self, cluster: RedisCluster, keys: Keys, *, node_id: str) -> None:
        # Not Admitter's: one script object, which RedisCluster sends to the slot of the keys each call declares.
        self._keys = keys
        self._node = node_id
        self._cluster = cluster
        self._script = cluster.register_script(_CONNECT_LUA)

    async def open(self, session_id: str, user: str, *, since: int | None, check: bool,
                   issued_at: float | None) -> Admission | None:
        args = self._args(session_id, user, since=since, check=check, issued_at=issued_at, with_global=False)
        admission = admission_of(await self._script(keys=self._declared(user), args=args), since)
        if admission is None:
            return None
        now = int(args[6])
        # Two slots: no transaction. The node's index, which a cleanup reads, last (as cluster_presence.py's add).
        async with self._cluster.pipeline(transaction=False) as pipe:
            pipe.zadd(self._keys.all_sessions, {session_id: now})
            pipe.hset(self._keys.node_sessions(self._node), session_id, user)
            await pipe.execute()
        return admission
