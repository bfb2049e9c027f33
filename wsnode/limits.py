"""Per-user limits kept in Redis, so that they hold across all of a user's sessions on every node: the publish
budget (frames and bytes per second, two token buckets), and the publish stream bounded by bytes as well as count.

Both are one script call each; the budget runs on the user's shard, the stream on the primary (which holds it).
"""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis

from wsnode.keys import Keys
from wsnode.presence import RedisShards, as_shards

# KEYS[1] the user's budget hash; ARGV frames/s, bytes/s, this frame's bytes, idle expiry ms.
# Returns 0 (allowed), 1 (frame rate spent) or 2 (byte rate spent); a refused frame costs nothing.
_BUDGET_LUA = """
local rate, brate, cost, ttl = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local burst = math.max(1, rate)
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local v = redis.call('HMGET', KEYS[1], 'f', 'b', 'at')
local f, b, at = tonumber(v[1]) or burst, tonumber(v[2]) or brate, tonumber(v[3]) or now
local dt = math.max(0, now - at)
f = math.min(burst, f + dt * rate)
b = math.min(brate, b + dt * brate)
local verdict = 0
if f < 1 then verdict = 1 elseif b < cost then verdict = 2 else f = f - 1; b = b - cost end
redis.call('HSET', KEYS[1], 'f', string.format('%.6f', f), 'b', string.format('%.3f', b),
           'at', string.format('%.6f', now))
redis.call('PEXPIRE', KEYS[1], ttl)
return verdict
"""

# KEYS[1] the stream, KEYS[2] its byte count; ARGV max entries, max bytes, then field, value, field, value...
# Adds the entry, then drops the oldest entries while the stream holds too many or too many bytes (an entry's bytes
# are the lengths of its fields and values). Never drops the entry just added. Returns its id.
_APPEND_LUA = """
local max_len, max_bytes = tonumber(ARGV[1]), tonumber(ARGV[2])
local fields, size = {}, 0
for i = 3, #ARGV do fields[#fields + 1] = ARGV[i]; size = size + #ARGV[i] end
local id = redis.call('XADD', KEYS[1], '*', unpack(fields))
local total = redis.call('INCRBY', KEYS[2], size)
while total > max_bytes or redis.call('XLEN', KEYS[1]) > max_len do
  local oldest = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 1)[1]
  if oldest == nil or oldest[1] == id then
    -- Only the new entry is left: the count had drifted (entries deleted by someone else); start again from it.
    redis.call('SET', KEYS[2], size)
    break
  end
  local n = 0
  for _, x in ipairs(oldest[2]) do n = n + #x end
  redis.call('XDEL', KEYS[1], oldest[1])
  total = redis.call('DECRBY', KEYS[2], n)
end
return id
"""

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
