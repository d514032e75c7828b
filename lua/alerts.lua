-- alerts.lua: add this replica's upstream outcomes to the fleet's tally, then decide which alerts
-- start or end. An alert is a field of the alerts hash while it fires, so of all the replicas
-- checking, exactly one sees each start ('firing') and each end ('resolved').
-- KEYS: the pool's base name, see common.lua (uses alerts, outcomes, open, half_open, disabled).
-- ARGV: 1 attempts since this replica's last call, 2 errors among them, 3 bucket width (ms),
--       4 error-rate window (ms), 5 error-rate threshold (0..1), 6 fewest attempts in the window
--       for the rate to count, 7 most sessions of one set looked at per call (bounds the cost;
--       beyond it a random sample is looked at).
-- Alerts: 'breaker:<id>' (its breaker is not closed), 'auth:<id>' (disabled after a 401/403),
--   'all_rate_limited' (every enabled session cooling or out of quota, at least one cooling),
--   'error_rate' (errors / attempts over the window above the threshold).
-- Returns {{name, 'firing' | 'resolved', since ms, detail}, ..., events} as {changes, events}.
local attempts, errors = tonumber(ARGV[1]), tonumber(ARGV[2])
local width, window, threshold = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local min_attempts, limit = tonumber(ARGV[6]), tonumber(ARGV[7])
local now = now_ms()
housekeeping(now, true)

-- The fleet's error rate: per-bucket tallies; buckets older than the window are dropped.
local bucket = math.floor(now / width)
if attempts > 0 then redis.call('HINCRBY', outcomes_key, bucket .. ':n', attempts) end
if errors > 0 then redis.call('HINCRBY', outcomes_key, bucket .. ':e', errors) end
local first = bucket - math.ceil(window / width) + 1
local n, e = 0, 0
local tally = redis.call('HGETALL', outcomes_key)
for i = 1, #tally, 2 do
  local b, kind = string.match(tally[i], '^(%d+):(%a)$')
  if not b or tonumber(b) < first then redis.call('HDEL', outcomes_key, tally[i])
  elseif kind == 'n' then n = n + tonumber(tally[i + 1])
  else e = e + tonumber(tally[i + 1]) end
end

local function some(set_key)
  if redis.call('SCARD', set_key) <= limit then return redis.call('SMEMBERS', set_key) end
  return redis.call('SRANDMEMBER', set_key, limit)
end

-- What fires now: detail by alert name.
local wanted = {}
for _, id in ipairs(redis.call('ZRANGE', open_key, 0, limit - 1)) do
  wanted['breaker:' .. id] = id
end
for _, id in ipairs(some(disabled_key)) do
  if redis.call('HGET', session_prefix .. id, 'disabled_reason') == 'auth' then
    wanted['auth:' .. id] = id
  end
end
local total, disabled = redis.call('ZCARD', members_key), redis.call('SCARD', disabled_key)
local cooling, quota = redis.call('ZCARD', cooling_key), redis.call('ZCARD', quota_key)
local enabled = total - disabled
if enabled > 0 and cooling > 0 and cooling + quota >= enabled then
  wanted['all_rate_limited'] = cooling .. ' cooling, ' .. quota .. ' out of quota, of ' ..
    enabled .. ' enabled'
end
if n >= min_attempts and n > 0 and e / n > threshold then
  wanted['error_rate'] = e .. ' of ' .. n .. ' attempts failed'
end

-- A session's alert still fires while its condition holds, also when the sample above missed it.
local function still(name)
  local kind, id = string.match(name, '^(%a+):(.+)$')
  if kind == 'breaker' then
    if redis.call('ZSCORE', open_key, id) or redis.call('SISMEMBER', half_open_key, id) == 1 then
      return id
    end
  elseif kind == 'auth' then
    if redis.call('SISMEMBER', disabled_key, id) == 1
      and redis.call('HGET', session_prefix .. id, 'disabled_reason') == 'auth' then
      return id
    end
  end
  return nil
end

local changes = {}
local firing = redis.call('HGETALL', alerts_key)
for i = 1, #firing, 2 do
  local name = firing[i]
  if wanted[name] then
    wanted[name] = nil
  elseif not still(name) then
    redis.call('HDEL', alerts_key, name)
    table.insert(changes, {name, 'resolved', tonumber(firing[i + 1]), ''})
  end
end
for name, detail in pairs(wanted) do
  redis.call('HSET', alerts_key, name, now)
  table.insert(changes, {name, 'firing', now, detail})
end
return {changes, events}
