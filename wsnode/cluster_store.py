"""The message store on a Redis Cluster: the same scripts (cluster_lua.py), one call per slot of a push's users.

Each call declares in KEYS every key it may touch (the script builds the same names itself and reads only the last
key, the hash tag `{<tag>}` of the slot's node channels it SPUBLISHes on, cluster_lua.py),
so that redis-py's RedisCluster sends it to the master holding that slot, following `MOVED`/`ASK` and refreshing its
slot map as it goes. Declaring them all matters while the slot migrates: Redis then answers `ASK` or `TRYAGAIN`
(which redis-py retries) before the script starts, instead of failing it half way ("non local key") when some of the
user's keys have already moved, which would leave a counter incremented without its message.

A push to users in several slots is one call per slot, run concurrently, each with its own idempotency marker in its
slot, so a retry after a partial failure re-runs only the parts that did not happen (as with client-side shards).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from typing import Any

from redis.asyncio.cluster import PipelineCommand, RedisCluster
from redis.commands.core import AsyncScript
from redis.exceptions import (
    AskError,
    ConnectionError,
    NoScriptError,
    RedisClusterException,
    RedisError,
    TimeoutError,
    TryAgainError,
)

from wsnode import nodemsg
from wsnode.cluster_lua import ACK_LUA, PUSH_LUA
from wsnode.envelope import PushRequest, message_tail
from wsnode.keys import Keys
from wsnode.nodemsg import Unread
from wsnode.redis_connect import ClusterUnavailable
from wsnode.script_batch import check_replicated
from wsnode.store import MessageStore, PushResult, merged

_PUSH_KEYS = (":seq", ":msgs", ":unacked", ":unread", ":sessions")
_ACK_KEYS = (":unacked", ":unread", ":sessions")
_REPLICATED_ATTEMPTS = 20  # redirections (slot moved or migrating, script cache empty) followed per replicated call
_MIGRATING_PAUSE_S = 0.05


def by_slot(keys: Keys, users: Sequence[str]) -> dict[int, list[str]]:
    """Users per slot, each list in the order given."""
    groups: dict[int, list[str]] = {}
    for user in users:
        groups.setdefault(keys.user_slot(user), []).append(user)
    return groups


class ClusterMessageStore(MessageStore):
    """MessageStore whose pushes and acks run on the shard of the users' slot."""

    def __init__(self, cluster: RedisCluster, keys: Keys, *, max_count: int, max_age_s: float,
                 min_replicas: int = 0, wait_timeout_s: float = 1.0) -> None:
        # The plain store's reads (replay, unread) are single-slot: RedisCluster routes them by key.
        client: Any = cluster
        super().__init__(client, keys, max_count=max_count, max_age_s=max_age_s)
        self._cluster = cluster
        self._cluster_push = cluster.register_script(PUSH_LUA)
        self._cluster_ack = cluster.register_script(ACK_LUA)
        self._min_replicas = min_replicas
        self._wait_timeout_ms = int(wait_timeout_s * 1000)

    async def _run(self, script: AsyncScript, keys: list[str], args: list[str | int]) -> Any:
        if not self._min_replicas:
            return await script(keys=keys, args=args)
        return await self._replicated(script, keys, args)

    async def _refresh_slots(self) -> None:
        with contextlib.suppress(RedisError, OSError, RedisClusterException):
            await self._cluster.nodes_manager.initialize()

    async def _replicated(self, script: AsyncScript, keys: list[str], args: list[str | int]) -> Any:
        """The script, then `WAIT` on the same connection to the slot's master (WAIT counts the replicas that have
        this connection's writes), so that the push is answered only once `min_replicas` replicas have it."""
        for _ in range(_REPLICATED_ATTEMPTS):
            node = self._cluster.get_node_from_key(keys[0])
            if node is None:
                raise ClusterUnavailable(f"no master serves the slot of {keys[0]!r}")
            calls = [PipelineCommand(0, "EVALSHA", script.sha, len(keys), *keys, *args),
                     PipelineCommand(1, "WAIT", self._min_replicas, self._wait_timeout_ms)]
            try:
                await node.execute_pipeline(calls)
            except (ConnectionError, TimeoutError, OSError):
                await self._refresh_slots()
                raise
            result, confirmed = calls[0].result, calls[1].result
            if isinstance(result, (ConnectionError, TimeoutError, OSError)):
                await self._refresh_slots()  # the master may be gone: the next call goes where its replica took over
                raise result
            if isinstance(result, NoScriptError):  # a promoted replica, or a restart: load it there, run it again
                await node.execute_command("SCRIPT", "LOAD", script.script)
                continue
            if isinstance(result, (AskError, TryAgainError)):  # MOVED (an AskError), ASK or TRYAGAIN: the script
                # did not run. Refresh the slot map, and give a migrating slot a moment to finish.
                await self._cluster.nodes_manager.initialize()
                await asyncio.sleep(_MIGRATING_PAUSE_S)
                continue
            if isinstance(result, Exception):
                raise result
            check_replicated(confirmed, self._min_replicas, self._wait_timeout_ms)
            return result
        raise ClusterUnavailable(f"the slot of {keys[0]!r} kept moving ({_REPLICATED_ATTEMPTS} redirections)")

    async def push_to_users(self, request: PushRequest, *, push_id: str, ts_ms: int,
                            dedupe_key: str | None = None) -> PushResult:
        tail = message_tail(module=request.module, event=request.event, data_json=request.data_json, ts_ms=ts_ms)

        async def part(slot: int, users: list[str]) -> Any:
            marker = self._keys.user_dedupe(dedupe_key, users[0]) if dedupe_key else ""
            args: list[str | int] = [self._keys.prefix, tail, "1" if request.store else "0", request.module,
                                     self._max_count, self._max_age_ms, push_id, marker, *users]
            declared = [self._keys.user_base(user) + suffix for user in users for suffix in _PUSH_KEYS]
            return await self._run(self._cluster_push, [*declared, *([marker] if marker else []),
                                                        self._keys.slot_channel_tag(slot)], args)

        return merged(await asyncio.gather(*(part(slot, users)
                                             for slot, users in by_slot(self._keys, request.users).items())))

    async def ack(self, user: str, message_id: str) -> dict[str, int] | None:
        declared = [*(self._keys.user_base(user) + suffix for suffix in _ACK_KEYS),
                    self._keys.slot_channel_tag(self._keys.user_slot(user))]
        result = await self._run(self._cluster_ack, declared, [self._keys.prefix, user, message_id])
        if result is None:
            return None
        message = nodemsg.decode(result)
        return message.counts if isinstance(message, Unread) else {}
