-- Merge one user's keys brought from another shard into the user's keys here (wsnode/reshard.py), atomically
-- against pushes from nodes already on the new list: the counter takes the largest of both and the clock, messages
-- and unacked ids are a union, unread counts are recounted from the unacked ids (store.py: the count of unacked
-- stored messages per module), each key keeps the longer TTL, a revocation the later time. Merging the same data
-- again adds nothing, except for a message that had to be renumbered (below): a run killed between this merge and
-- the deletion of the source's copy stores that one twice. Moved messages come in id order, so renumbered ones keep
-- their order.
-- ARGV: prefix, user, JSON {seq, msgs = {{id, frame}...}, msgs_ttl, unacked = {id = module}, unacked_ttl, revoked,
-- revoked_ttl} (ids as text, TTLs as PTTL answers). Returns {messages added, of which renumbered}.
local prefix, user, data = ARGV[1], ARGV[2], cjson.decode(ARGV[3])
local base = prefix .. 'wsgate:user:' .. user
local msgs, unacked, unread = base .. ':msgs', base .. ':unacked', base .. ':unread'
local function merged_ttl(before, incoming)
  if before == -2 then return incoming end
  if incoming == -2 then return before end
  if before == -1 or incoming == -1 then return -1 end
  return math.max(before, incoming)
end
local function set_ttl(key, ttl)
  if redis.call('EXISTS', key) == 0 then return end
  if ttl == -1 then redis.call('PERSIST', key) elseif ttl > 0 then redis.call('PEXPIRE', key, string.format('%d', ttl)) end
end
local ttl = {msgs = redis.call('PTTL', msgs), unacked = redis.call('PTTL', unacked),
             revoked = redis.call('PTTL', base .. ':revoked')}
-- The counter never goes back, and starts from the clock like the push script's first id: during a rolling restart
-- nodes on the old list number this user's new messages on the old shard from the clock too, so both sides rarely
-- meet.
local t = redis.call('TIME')
local before = tonumber(redis.call('GET', base .. ':seq') or '0')
local seq = math.max(before, data.seq ~= cjson.null and tonumber(data.seq) or 0,
                     tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000))
redis.call('SET', base .. ':seq', string.format('%d', seq))
local added, renumbered = 0, 0
for _, row in ipairs(data.msgs) do
  local id, frame = row[1], row[2]
  local here = redis.call('ZRANGEBYSCORE', msgs, id, id)
  local present = false
  for _, member in ipairs(here) do present = present or member == frame end
  if not present then
    local module = data.unacked[id]
    if #here > 0 or tonumber(id) <= before then
      -- This shard already gave out this id (to another message, or to one a client may have seen since): the
      -- moved message takes the next id here (its frame names it), so a session resuming after the last id it saw
      -- still gets it, and a message is never hidden behind another with its id.
      local new_id = string.format('%d', redis.call('INCR', base .. ':seq'))
      local head = '{"type":"message","id":"'
      frame = head .. new_id .. '"' .. string.sub(frame, #head + #id + 2)
      id, renumbered = new_id, renumbered + 1
    end
    redis.call('ZADD', msgs, id, frame)
    if module then redis.call('HSET', unacked, id, module) end
    added = added + 1
  end
end
set_ttl(msgs, merged_ttl(ttl.msgs, data.msgs_ttl))
local unacked_ttl = merged_ttl(ttl.unacked, data.unacked_ttl)
set_ttl(unacked, unacked_ttl)
redis.call('DEL', unread)
local per_module = {}
for _, module in ipairs(redis.call('HVALS', unacked)) do per_module[module] = (per_module[module] or 0) + 1 end
for module, count in pairs(per_module) do redis.call('HSET', unread, module, string.format('%d', count)) end
set_ttl(unread, unacked_ttl)
if data.revoked ~= cjson.null then
  local here = redis.call('GET', base .. ':revoked')
  if not here or tonumber(here) < tonumber(data.revoked) then redis.call('SET', base .. ':revoked', data.revoked) end
  set_ttl(base .. ':revoked', merged_ttl(ttl.revoked, data.revoked_ttl))
end
return {added, renumbered}
