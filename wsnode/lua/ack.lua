-- Mark one stored message read: wsnode/store.py's ack, on the user's shard. ARGV: prefix, user, message id.
-- Returns false when the message is not unacked; else the node message of kind 'unread' (keys defined in
-- wsnode/nodemsg.py, held to them by tests/wsnode/test_lua.py) that it published to the user's live nodes.
local prefix, user, id = ARGV[1], ARGV[2], ARGV[3]
local base = prefix .. 'wsgate:user:' .. user
local mod = redis.call('HGET', base .. ':unacked', id)
if not mod then return false end
redis.call('HDEL', base .. ':unacked', id)
if redis.call('HINCRBY', base .. ':unread', mod, -1) <= 0 then redis.call('HDEL', base .. ':unread', mod) end
local flat = redis.call('HGETALL', base .. ':unread')
local out = {}
for i = 1, #flat, 2 do out[flat[i]] = tonumber(flat[i + 1]) end
local encoded = cjson.encode({k = 'unread', u = user, n = out})
local seen = {}
for _, member in ipairs(redis.call('ZRANGE', base .. ':sessions', 0, -1)) do
  local node = string.match(member, '^(.*)|')
  if node and not seen[node] then
    seen[node] = true
    if redis.call('EXISTS', prefix .. 'wsgate:node:' .. node .. ':alive') == 1 then
      redis.call('PUBLISH', prefix .. 'wsgate:node:' .. node, encoded)
    end
  end
end
return encoded
