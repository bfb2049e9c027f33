-- One connect's Redis work (wsnode/admission.py) in one call on the user's shard, instead of three round trips of
-- 13 commands: the revocation check, the user's session count (for --max-sessions-per-user), the session's records
-- (presence.py) and what the welcome frame and the replay need (the same reads as MessageStore.replay).
-- Names come in ARGV, built by keys.py (tagged on a Cluster); KEYS declares the user's keys for a Cluster's routing
-- only. On a Cluster the caller gives '' for the two global names, which are in other slots, and writes those
-- itself after this script.
-- ARGV: the user's key stem (keys.py user_base), the all-sessions key or '', the node's session index or '', the
-- presence member '<node>|<session>', session id, user, start (epoch ms), '1' to check revocation and count the
-- user's sessions ('0' for anonymous users), the token's iat ('' when it has none), since ('' for none).
-- Returns {0} when a token issued at iat is revoked (nothing written), else {1, sessions held before this one,
-- the user's last stored id or false, {frame, id, ...} in id order, {module, count, ...}}.
local stem, all_sessions, node_sessions, member = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local session, user, start, check, iat, since = ARGV[5], ARGV[6], ARGV[7], ARGV[8] == '1', ARGV[9], ARGV[10]
local user_sessions = stem .. ':sessions'
local held, seq = 0, nil
if check then
  -- One MGET for both (same slot on a Cluster: both carry the user's tag).
  local got = redis.call('MGET', stem .. ':revoked', stem .. ':seq')
  if got[1] then
    -- As Node.admit did: refused unless the token says it was issued at or after the revocation (fail closed on a
    -- value that is not a number).
    local revoked, issued = tonumber(got[1]), tonumber(iat)
    if revoked == nil or issued == nil or issued < revoked then return {0} end
  end
  seq = got[2]
  held = redis.call('ZCARD', user_sessions)
else
  seq = redis.call('GET', stem .. ':seq')
end
redis.call('ZADD', user_sessions, start, member)
if all_sessions ~= '' then redis.call('ZADD', all_sessions, start, session) end
if node_sessions ~= '' then redis.call('HSET', node_sessions, session, user) end
local lowest = '-inf'
if since ~= '' then lowest = '(' .. since end
local rows = redis.call('ZRANGEBYSCORE', stem .. ':msgs', lowest, '+inf', 'WITHSCORES')
if since == '' and #rows > 0 then
  -- Without since a session gets the unacked stored frames only; HKEYS only when there is something to filter.
  local unacked = {}
  for _, id in ipairs(redis.call('HKEYS', stem .. ':unacked')) do unacked[tonumber(id)] = true end
  local kept = {}
  for i = 1, #rows, 2 do
    if unacked[tonumber(rows[i + 1])] then
      kept[#kept + 1] = rows[i]
      kept[#kept + 1] = rows[i + 1]
    end
  end
  rows = kept
end
return {1, held, seq or false, rows, redis.call('HGETALL', stem .. ':unread')}
