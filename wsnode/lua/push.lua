-- Store and route one push to users: wsnode/store.py runs it once per users' shard (batched, script_batch.py).
-- ARGV: prefix, message tail, '1' to store, module, max count, max age ms, push id, dedupe key ('' for none), then
-- the users. Returns {online sessions, stored messages, the id per user as JSON, push id}.
-- To each live node holding a session of the users it publishes one node message of kind 'push', whose keys are
-- defined in wsnode/nodemsg.py: tests/wsnode/test_lua.py holds the tables below to them.
-- Most of its Redis CPU is Lua work, not Redis commands (bench/RESULTS.md, issue 19; measure a change with
-- `python -m bench.push_script --callgrind --baseline OLD.lua`): stored frames are not JSON-decoded to be trimmed,
-- trimming takes a few commands for any number of frames, and numbers go to Redis as text.
local prefix, tail, store = ARGV[1], ARGV[2], ARGV[3] == '1'
local module, max_count, max_age_ms, push_id = ARGV[4], tonumber(ARGV[5]), tonumber(ARGV[6]), ARGV[7]
local dedupe, max_age_arg = ARGV[8], ARGV[6]
-- Numbers given to redis.call are turned into text by Lua's printf("%.14g"), which was about a tenth of this script's
-- instructions (bench/push_script.py --callgrind): arguments go as text, and whole numbers are written with '%d'.
local function int(n) return string.format('%d', n) end
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
local function counts(key)
  local flat = redis.call('HGETALL', key)
  local out = {}
  for i = 1, #flat, 2 do out[flat[i]] = tonumber(flat[i + 1]) end
  return out
end
-- A stored frame starts with its id and ends with its time (the tail of wsnode/envelope.py): read both without
-- decoding the data between; anything else (no such frame is written) is decoded.
local function frame_id(member)
  return string.match(member, '^{"type":"message","id":"(%d+)"') or cjson.decode(member).id
end
local function frame_ts(member)
  local ts = string.match(member, ',"ts":(%d+)}$', -32)  -- looked for near the end only: the data may be long
  if ts then return tonumber(ts) end
  return cjson.decode(member).ts
end
-- Drops stored frames (oldest first) with their unacked entries and unread counts, a few commands for all of them.
local function drop(keys, members)
  local ids = {}
  for n, member in ipairs(members) do ids[n] = frame_id(member) end
  redis.call('ZREM', keys.msgs, unpack(members))
  local mods = redis.call('HMGET', keys.unacked, unpack(ids))
  local fewer, changed = {}, {}
  for n = 1, #ids do
    local mod = mods[n]
    if mod then
      if not fewer[mod] then fewer[mod] = 0; changed[#changed + 1] = mod end
      fewer[mod] = fewer[mod] + 1
    end
  end
  if #changed > 0 then
    redis.call('HDEL', keys.unacked, unpack(ids))
    for _, mod in ipairs(changed) do
      if redis.call('HINCRBY', keys.unread, mod, int(-fewer[mod])) <= 0 then redis.call('HDEL', keys.unread, mod) end
    end
  end
end
-- Over max count, the oldest frames go; then, while the oldest is over max age, it goes too. With a full store one
-- ZRANGE (ranks 0 to -max count) reads just the frames over the count and the oldest to keep, so no ZCARD; more
-- are read only when that one is too old.
local function trim(keys)
  local rows, excess = {}, 0
  if max_count >= 1 then
    rows = redis.call('ZRANGE', keys.msgs, '0', int(-max_count))
    excess = math.max(#rows - 1, 0)
  else
    excess = redis.call('ZCARD', keys.msgs)
  end
  if #rows == 0 then rows = redis.call('ZRANGE', keys.msgs, '0', '0') end  -- not full: the oldest, for its age
  local gone, i = {}, 1
  while true do
    if i > #rows then
      rows, i = redis.call('ZRANGE', keys.msgs, int(#gone), int(#gone + 63)), 1
      if #rows == 0 then break end  -- no frame left
    end
    local member = rows[i]
    if #gone >= excess and frame_ts(member) >= now - max_age_ms then break end
    gone[#gone + 1] = member
    i = i + 1
  end
  for first = 1, #gone, 500 do  -- in slices: unpack has a limit
    drop(keys, {unpack(gone, first, math.min(first + 499, #gone))})
  end
end
for i = 9, #ARGV do
  local user = ARGV[i]
  local base = prefix .. 'wsgate:user:' .. user
  local keys = {msgs = base .. ':msgs', unacked = base .. ':unacked', unread = base .. ':unread'}
  local d = {u = user}  -- nodemsg: delivery (the node message's 'd' holds these, per node)
  if store then
    local seq = redis.call('INCR', base .. ':seq')
    if seq == 1 then
      -- A user's first id comes from the clock (ms), not 1: when Redis loses its data, ids given out before are
      -- not given out again, so sessions and clients that saw them do not drop new messages as duplicates.
      seq = now
      redis.call('SET', base .. ':seq', int(seq))
    end
    local id = int(seq)
    local frame = '{"type":"message","id":"' .. id .. '"' .. tail
    redis.call('ZADD', keys.msgs, id, frame)
    redis.call('HSET', keys.unacked, id, module)
    redis.call('HINCRBY', keys.unread, module, '1')
    trim(keys)
    redis.call('PEXPIRE', keys.msgs, max_age_arg)
    redis.call('PEXPIRE', keys.unacked, max_age_arg)
    redis.call('PEXPIRE', keys.unread, max_age_arg)
    d.i, d.f, d.n = seq, frame, counts(keys.unread)
    stored = stored + 1
    ids[user] = id
  else
    d.i = tonumber(redis.call('GET', base .. ':seq') or '0')
  end
  local members = redis.call('ZRANGE', base .. ':sessions', '0', '-1')
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
  redis.call('SET', dedupe, cjson.encode({online, stored, ids_json, push_id}), 'PX', max_age_arg)
end
return {online, stored, ids_json, push_id}
