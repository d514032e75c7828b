-- release.lua: end a lease and record what happened on it.
-- KEYS: the pool's keys, see common.lua.
-- ARGV: 1 lease memory (ms), 2 lease id, 3 outcome (success | rate_limited | auth | server |
--       network | timeout | other), 4 latency (ms, -1 unknown), 5 cooldown (ms, used on
--       rate_limited), 6 detail (a status code or error class; never a secret),
--       7 health half-life (ms), 8 EWMA weight of one observation (0..1), 9 health floor (0..1),
--       10 latency target (ms).
-- Returns {status, session id or '', cooldown deadline ms or 0} where status is
--   'released' (the lease was live), 'late' (it had expired; the outcome still counts),
--   'duplicate' (released before: nothing changes) or 'unknown' (no such lease remembered).
local lease_id, outcome, latency = ARGV[2], ARGV[3], tonumber(ARGV[4])
local cooldown_ms, detail = tonumber(ARGV[5]), ARGV[6]
local half_life, alpha, floor = tonumber(ARGV[7]), tonumber(ARGV[8]), tonumber(ARGV[9])
local latency_target = tonumber(ARGV[10])

-- Housekeeping first: a lease past its expiry is 'late' even if no call has reaped it yet.
local now = now_ms()
housekeeping(now)
if redis.call('ZSCORE', released_key, lease_id) then
  return {'duplicate', '', 0}
end
local id = redis.call('HGET', owners_key, lease_id)
if not id then return {'unknown', '', 0} end

local key = session_prefix .. id
local status = 'late'
if redis.call('ZREM', leases_key, lease_id) == 1 then
  status = 'released'
  if redis.call('HINCRBY', key, 'in_flight', -1) < 0 then redis.call('HSET', key, 'in_flight', 0) end
else
  redis.call('ZREM', expired_key, lease_id)
end
redis.call('HDEL', owners_key, lease_id)
redis.call('ZADD', released_key, now, lease_id)

redis.call('HINCRBY', key, 'n_' .. outcome, 1)
if outcome ~= 'success' then
  redis.call('HSET', key, 'last_error', detail ~= '' and (outcome .. ': ' .. detail) or outcome,
    'last_error_at', now)
end

-- Health: a success-rate average that drifts back to 1 while no news arrives (half-life), and a
-- latency average; a rate limit says nothing about health, its cooldown deals with it.
if outcome ~= 'rate_limited' then
  local h = redis.call('HMGET', key, 'success_rate', 'latency_ms', 'health_at')
  local rate, avg_latency = tonumber(h[1]) or 1, tonumber(h[2])
  local idle = math.max(0, now - (tonumber(h[3]) or now))
  rate = 1 - (1 - rate) * 0.5 ^ (idle / half_life)
  rate = rate + alpha * ((outcome == 'success' and 1 or 0) - rate)
  if outcome == 'success' and latency >= 0 then
    avg_latency = avg_latency and (avg_latency + alpha * (latency - avg_latency)) or latency
  end
  local speed = 1
  if avg_latency and avg_latency > latency_target then speed = math.max(0.5, latency_target / avg_latency) end
  redis.call('HSET', key, 'success_rate', string.format('%.4f', rate),
    'health', string.format('%.4f', math.max(floor, rate * speed)), 'health_at', now)
  if avg_latency then redis.call('HSET', key, 'latency_ms', math.floor(avg_latency + 0.5)) end
end

local deadline = 0
if outcome == 'rate_limited' then
  -- A cooldown is an absolute deadline and only ever moves later.
  deadline = math.max(tonumber(redis.call('HGET', key, 'cooldown_until')) or 0, now + cooldown_ms)
  redis.call('HSET', key, 'cooldown_until', deadline)
  redis.call('HINCRBY', key, 'cooldowns', 1)
end
refresh(id, now)
return {status, id, deadline}
