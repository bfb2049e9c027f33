-- A node's presence heartbeat (wsnode/presence.py), on every shard. KEYS none (names built from the prefix, as the
-- push script does); ARGV: prefix, node id, ttl ms, this process's token.
-- Returns {1 if this process's alive key was still there, number of dead nodes cleaned}.
local prefix, node, ttl, token = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local nodes = prefix .. 'wsgate:nodes'
local function clean(dead)
  local index = prefix .. 'wsgate:node:' .. dead .. ':sessions'
  local flat = redis.call('HGETALL', index)
  for i = 1, #flat, 2 do
    redis.call('ZREM', prefix .. 'wsgate:user:' .. flat[i + 1] .. ':sessions', dead .. '|' .. flat[i])
    redis.call('ZREM', prefix .. 'wsgate:sessions', flat[i])
  end
  redis.call('DEL', index)
end
local had = redis.call('SET', prefix .. 'wsgate:node:' .. node .. ':alive', token, 'PX', ttl, 'GET')
if had and had ~= token then
  clean(node)  -- an earlier process with this node id died before its key expired: its sessions are gone
end
redis.call('ZADD', nodes, now + ttl, node)
local cleaned = 0
for _, dead in ipairs(redis.call('ZRANGEBYSCORE', nodes, '-inf', now)) do
  if redis.call('EXISTS', prefix .. 'wsgate:node:' .. dead .. ':alive') == 0 then
    clean(dead)
    redis.call('ZREM', nodes, dead)
    cleaned = cleaned + 1
  end
end
if had == token then return {1, cleaned} end
return {0, cleaned}
