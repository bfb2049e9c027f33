-- Set one user's keys aside on the shard they leave (wsnode/reshard.py): RENAME keeps values and TTLs, and is atomic
-- against pushes still arriving from nodes on the old list, which then start fresh keys that a later run moves.
-- ARGV: prefix, user, then the key suffixes to move. Returns the number of keys set aside; 0 while keys set aside
-- by an earlier run are still there (they are merged first, so nothing is overwritten).
local prefix, user = ARGV[1], ARGV[2]
local live = prefix .. 'wsgate:user:' .. user .. ':'
local staged = prefix .. 'wsgate:reshard:' .. user .. ':'
for i = 3, #ARGV do
  if redis.call('EXISTS', staged .. ARGV[i]) == 1 then return 0 end
end
local n = 0
for i = 3, #ARGV do
  if redis.call('EXISTS', live .. ARGV[i]) == 1 then
    redis.call('RENAME', live .. ARGV[i], staged .. ARGV[i])
    n = n + 1
  end
end
return n
