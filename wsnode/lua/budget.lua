-- A user's publish budget (wsnode/limits.py). KEYS[1] the user's budget hash; ARGV frames/s, bytes/s, this frame's
-- bytes, idle expiry ms. Returns 0 (allowed), 1 (frame rate spent) or 2 (byte rate spent); a refused frame costs
-- nothing.
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
