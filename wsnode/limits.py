"""Per-user limits kept in Redis, so that they hold across all of a user's sessions on every node: the publish
budget (frames and bytes per second, two token buckets), and the publish stream bounded by bytes as well as count.

Both are one script call each; the budget runs on the user's shard, the stream on the primary (which holds it).
"""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis

from wsnode import lua
from wsnode.keys import Keys
from wsnode.presence import RedisShards, as_shards

_BUDGET_LUA = lua.source("budget")

_APPEND_LUA = lua.source("append")

PUBLISH_STREAM_MAX_LEN = 100_000
ALLOWED, FRAME_RATE_SPENT, BYTE_RATE_SPENT = 0, 1, 2


class UserLimits:
    """The publish budget per user and the bounded publish stream."""

    def __init__(self, client: aioredis.Redis | RedisShards, keys: Keys, *, publish_rate_per_s: float,
                 publish_bytes_rate_per_s: int, stream_max_bytes: int) -> None:
        self._shards = as_shards(client)
        self._keys = keys
        self._rate = publish_rate_per_s
        self._bytes_rate = publish_bytes_rate_per_s
        self._stream_max_bytes = stream_max_bytes
        self._budgets = [c.register_script(_BUDGET_LUA) for c in self._shards.all]
        self._append = self._shards.primary.register_script(_APPEND_LUA)

    async def spend_publish(self, user: str, size: int) -> int:
        """Take one frame of `size` bytes from the user's budget: ALLOWED, FRAME_RATE_SPENT or BYTE_RATE_SPENT."""
        index = self._shards.index_of(user)
        # Idle for long enough that both buckets would be full again: the hash may go.
        idle_ms = int(1000 * max(1.0, max(1.0, self._rate) / self._rate)) + 1000
        verdict = await self._budgets[index](keys=[self._keys.user_publish_budget(user)],
                                             args=[self._rate, self._bytes_rate, size, idle_ms])
        return int(verdict)

    async def append_publish(self, fields: dict[str, Any]) -> str:
        """Add an entry to the publish stream, trimming it by count and by bytes; the entry's id."""
        args: list[Any] = [PUBLISH_STREAM_MAX_LEN, self._stream_max_bytes]
        for name, value in fields.items():
            args.extend((name, value))
        entry_id = await self._append(keys=[self._keys.publish_stream, self._keys.publish_stream_bytes], args=args)
        return entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)
