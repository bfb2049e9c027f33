-- Store and route one push to users: wsnode/store.py runs it once per users' shard (batched, script_batch.py).
-- ARGV: prefix, message tail, '1' to store, module, max count, max age ms, push id, dedupe key ('' for none), then
-- the users. Returns {online sessions, stored messages, the id per user as JSON, push id}.
-- To each live node holding a session of the users it publishes one node message of kind 'push', whose keys are
-- defined in wsnode/nodemsg.py: tests/wsnode/test_lua.py holds the tables below to them.
local prefix, tail, store = ARGV[1], ARGV[2], ARGV[3] == '1'
local module, max_count, max_age_ms, push_id = ARGV[4], tonumber(ARGV[5]), tonumber(ARGV[6]), ARGV[7]
local dedupe = ARGV[8]
if dedupe ~= '' then
  local before = redis.call('GET', dedupe)
  if before then
    local r = cjson.decode(before)
    return {r[1], r[2], r[3], r[4]}
  end
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local per_node, order = {}, {}
local alive = {}  -- node -> whether its liveness key exists (sessions of dead nodes are skipped, see presence.py)
local online, stored, ids = 0, 0, {}
local function counts(base)
  local flat = redis.call('HGETALL', base .. ':unread')
  local out = {}
  for i = 1, #flat, 2 do out[flat[i]] = tonumber(flat[i + 1]) end
  return out
end
local function drop(base, member)
  local m = cjson.decode(member)
  redis.call('ZREM', base .. ':msgs', member)
  local mod = redis.call('HGET', base .. ':unacked', m.id)
  if mod then
    redis.call('HDEL', base .. ':unacked', m.id)
    if redis.call('HINCRBY', base .. ':unread', mod, -1) <= 0 then redis.call('HDEL', base .. ':unread', mod) end
  end
end
for i = 9, #ARGV do
  local user = ARGV[i]
  local base = prefix .. 'wsgate:user:' .. user
  local d = {u = user}  -- nodemsg: delivery (the node message's 'd' holds these, per node)
  if store then
    local seq
    if redis.call('EXISTS', base .. ':seq') == 1 then
      seq = redis.call('INCR', base .. ':seq')
    else
      -- A user's first id comes from the clock (ms), not 1: when Redis loses its data, ids given out before are
      -- not given out again, so sessions and clients that saw them do not drop new messages as duplicates.
      seq = now
      redis.call('SET', base .. ':seq', seq)
    end
    local id = tostring(seq)
    local frame = '{"type":"message","id":"' .. id .. '"' .. tail
    redis.call('ZADD', base .. ':msgs', seq, frame)
    redis.call('HSET', base .. ':unacked', id, module)
    redis.call('HINCRBY', base .. ':unread', module, 1)
    while redis.call('ZCARD', base .. ':msgs') > max_count do
      drop(base, redis.call('ZRANGE', base .. ':msgs', 0, 0)[1])
    end
    while true do
      local oldest = redis.call('ZRANGE', base .. ':msgs', 0, 0)[1]
      if not oldest or cjson.decode(oldest).ts >= now - max_age_ms then break end
      drop(base, oldest)
    end
    for _, suffix in ipairs({':msgs', ':unacked', ':unread'}) do redis.call('PEXPIRE', base .. suffix, max_age_ms) end
    d.i, d.f, d.n = seq, frame, counts(base)
    stored = stored + 1
    ids[user] = id
  else
    d.i = tonumber(redis.call('GET', base .. ':seq') or '0')
  end
  local members = redis.call('ZRANGE', base .. ':sessions', 0, -1)
  local seen = {}
  for _, member in ipairs(members) do
    local node = string.match(member, '^(.*)|')
    if node and alive[node] == nil then
      alive[node] = redis.call('EXISTS', prefix .. 'wsgate:node:' .. node .. ':alive') == 1
    end
    if node and alive[node] then online = online + 1 end
    if node and alive[node] and not seen[node] then
      seen[node] = true
      if not per_node[node] then per_node[node] = {}; table.insert(order, node) end
      table.insert(per_node[node], d)
    end
  end
end
for _, node in ipairs(order) do
  local payload = cjson.encode({k = 'push', p = push_id, t = tail, d = per_node[node]})
  redis.call('PUBLISH', prefix .. 'wsgate:node:' .. node, payload)
end
local ids_json = '{}'
if stored > 0 then ids_json = cjson.encode(ids) end
if dedupe ~= '' then
  redis.call('SET', dedupe, cjson.encode({online, stored, ids_json, push_id}), 'PX', max_age_ms)
end
return {online, stored, ids_json, push_id}
