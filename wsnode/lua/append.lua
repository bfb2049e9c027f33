-- The bounded publish stream (wsnode/limits.py). KEYS[1] the stream, KEYS[2] its byte count; ARGV max entries, max
-- bytes, then field, value, field, value... Adds the entry, then drops the oldest entries while the stream holds too
-- many or too many bytes (an entry's bytes are the lengths of its fields and values). Never drops the entry just
-- added. Returns its id.
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
