"""Per-user message store, unread counts and replay, in Redis; storing and routing a push is one Lua script.

Per user U (under the prefix): `wsgate:user:U:seq` (counter, the message ids), `:msgs` (sorted set of ready-to-send
message frames scored by id), `:unacked` (hash id -> module), `:unread` (hash module -> count). Unread counts are
the number of unacked stored messages per module, so trimming by count or age lowers them too. Because one script
increments the id, stores the frame and publishes it to the live nodes holding U's sessions (presence.py),
publications for U leave Redis in id order.

Sharded Redis (wsnode/sharding.py): U's keys, and the idempotency marker of a push as far as it concerns U, live on
U's shard; the script runs there unchanged, and a push to users on several shards is one script call per shard
(concurrently, each still batched with other pushes to that shard), whose answers are summed.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

import redis.asyncio as aioredis

from wsnode import lua, nodemsg
from wsnode.envelope import PushRequest, message_tail
from wsnode.keys import Keys
from wsnode.nodemsg import Unread
from wsnode.presence import RedisShards, as_shards
from wsnode.redis_lane import RedisLane
from wsnode.script_batch import ScriptBatcher

_PUSH_LUA = lua.source("push")

_ACK_LUA = lua.source("ack")


@dataclass(frozen=True, slots=True)
class PushResult:
    """What the push API answers: sessions online among the recipients, stored messages, the id per user."""

    online_sessions: int
    stored: int
    ids: dict[str, str]
    push_id: str


@dataclass(frozen=True, slots=True)
class Replay:
    """Stored frames a connecting session gets first, in id order, with the user's unread counts."""

    frames: list[tuple[int, str]]
    unread: dict[str, int]
    recovered: bool | None
    position: int


def counts_of(raw: dict[Any, Any]) -> dict[str, int]:
    """Unread counts from HGETALL's reply (positive counts only)."""
    return {(k.decode() if isinstance(k, bytes) else str(k)): int(v) for k, v in raw.items() if int(v) > 0}


def merged(replies: Sequence[Any]) -> PushResult:
    """One push's result from its parts' script replies (one per shard or slot), in the order of their first users."""
    results = [_result(reply) for reply in replies]
    ids: dict[str, str] = {}
    for result in results:
        ids.update(result.ids)
    # The first user's part names the push (a retry that re-ran another part got a new push id there).
    return PushResult(online_sessions=sum(r.online_sessions for r in results),
                      stored=sum(r.stored for r in results), ids=ids, push_id=results[0].push_id)


def _result(reply: Any) -> PushResult:
    online, stored, ids, first_push_id = cast(list[Any], reply)
    decoded = json.loads(ids.decode() if isinstance(ids, bytes) else str(ids))
    return PushResult(online_sessions=int(online), stored=int(stored),
                      ids=decoded if isinstance(decoded, dict) else {},
                      push_id=first_push_id.decode() if isinstance(first_push_id, bytes) else str(first_push_id))


class MessageStore:
    """The store and the atomic store-and-route of pushes to users."""

    def __init__(self, client: aioredis.Redis | RedisShards, keys: Keys, *, max_count: int,
                 max_age_s: float, min_replicas: int = 0, wait_timeout_s: float = 1.0) -> None:
        self._shards = as_shards(client)
        self._keys = keys
        self._max_count = max_count
        self._max_age_ms = int(max_age_s * 1000)
        # Concurrent pushes to one shard share one pipelined round trip (see script_batch.py).
        self._push = [ScriptBatcher(c, _PUSH_LUA, min_replicas=min_replicas, wait_timeout_ms=int(wait_timeout_s * 1000))
                      for c in self._shards.all]
        self._ack = [c.register_script(_ACK_LUA) for c in self._shards.all]

    def use_lanes(self, lanes: Sequence[RedisLane | None]) -> None:
        """Send each shard's push script calls through its lane (redis_lane.py; None: through redis-py)."""
        for batcher, lane in zip(self._push, lanes, strict=True):
            batcher.lane = lane

    async def push_to_users(self, request: PushRequest, *, push_id: str, ts_ms: int,
                            dedupe_key: str | None = None) -> PushResult:
        """Store (when asked) and route one push to its users; returns once Redis has it (before the 202).

        With `dedupe_key`, a second push under the same key (a retried stream entry or Idempotency-Key) does
        nothing and returns the first one's result, so a retry never produces a message with a new id.
        """
        tail = message_tail(module=request.module, event=request.event, data_json=request.data_json, ts_ms=ts_ms)
        head: list[str | int] = [self._keys.prefix, tail, "1" if request.store else "0", request.module,
                                 self._max_count, self._max_age_ms, push_id,
                                 self._keys.dedupe(dedupe_key) if dedupe_key else ""]
        if self._shards.count == 1:
            return _result(await self._push[0](keys=[], args=[*head, *request.users]))
        groups = self._shards.group(request.users)
        if len(groups) == 1:
            ((index, users),) = groups.items()
            return _result(await self._push[index](keys=[], args=[*head, *users]))
        # One call per shard. With a dedupe key each shard keeps the marker of its own part, so a retry after a
        # partial failure (one shard answered, another did not) re-runs only the part that did not happen.
        parts = await asyncio.gather(*(self._push[index](keys=[], args=[*head, *users])
                                       for index, users in groups.items()))
        return merged(parts)

    async def ack(self, user: str, message_id: str) -> dict[str, int] | None:
        """Mark one stored message read; the new counts (also sent to the user's sessions), None if not unacked."""
        result = await self._ack[self._shards.index_of(user)](keys=[], args=[self._keys.prefix, user, message_id])
        if result is None:
            return None
        # The script answers with the message it published to the user's nodes.
        message = nodemsg.decode(result)
        return message.counts if isinstance(message, Unread) else {}

    async def unread(self, user: str) -> dict[str, int]:
        """Unread counts per module."""
        return counts_of(await self._shards.for_user(user).hgetall(self._keys.user_base(user) + ":unread"))

    async def replay(self, user: str, since: int | None) -> Replay:
        """Stored frames after `since` (every unacked one when None), and whether `since` could be honoured."""
        base = self._keys.user_base(user)
        async with self._shards.for_user(user).pipeline(transaction=True) as pipe:
            pipe.get(base + ":seq")
            pipe.hkeys(base + ":unacked")
            lowest = "-inf" if since is None else f"({since}"
            pipe.zrangebyscore(base + ":msgs", lowest, "+inf", withscores=True)
            pipe.hgetall(base + ":unread")
            seq, unacked_ids, rows, unread = await pipe.execute()
        frames = [(int(score), member.decode() if isinstance(member, bytes) else member) for member, score in rows]
        if since is None:
            unacked = {int(k) for k in unacked_ids}
            frames = [(n, frame) for n, frame in frames if n in unacked]
        return replay_of(since, int(seq or 0), frames, counts_of(unread))


def replay_of(since: int | None, position: int, frames: list[tuple[int, str]], unread: dict[str, int]) -> Replay:
    """The replay of a session connecting with `since`, from the store's reads: the user's last id (`position`), the
    stored frames after `since` in id order (the unacked ones when `since` is None) and the unread counts."""
    recovered: bool | None = None
    if since is not None and since > position:
        frames, recovered = [], False  # an id this store never gave out (store lost): start afresh
    elif since is not None:
        # Recovered when every id in (since, position] is still held, i.e. the oldest returned is since + 1.
        recovered = since == position or (bool(frames) and frames[0][0] == since + 1)
    return Replay(frames=frames, unread=unread, recovered=recovered, position=position)
