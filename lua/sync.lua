-- sync.lua: the pool's sessions are those that some live replica's configuration names.
-- Each replica claims the ids of its configuration for a TTL, renewed while it runs. A session
-- stays while a live claim names it, so replicas that briefly disagree (a rollout, a Secret that
-- reaches pods at different moments) never take each other's sessions away; it leaves when the
-- last claim naming it is replaced, dropped or expires: never leased again, its hash (history,
-- in-flight leases) kept, and it comes back with that history if it is named again.
-- KEYS: the pool's base name (common.lua). Only sync uses claims_key (replica id -> claim
--       deadline, ms) and the claim sets: the ids replica r names are claim_prefix .. r.
-- ARGV: 1 strategy, 2 replica id, 3 claim TTL (ms), 4 step: 'part' (more sessions follow), 'last'
--       (the configuration is complete), 'renew' (no sessions: extend the claim) or 'leave' (drop
--       the claim), 5 generation (unique per sync: a multi-call sync collects into claim set ..
--       ':' .. generation), then the pool-wide operator settings, stored in the pool hash (the
--       last replica to sync sets them): 6 breaker threshold (0 = no breaker), 7 breaker timeout
--       (ms), 8 longest breaker timeout (ms), 9 half-open probes, 10 longest cooldown (ms),
--       11 breaker window (calls), 12 breaker minimum calls, 13 breaker failure ratio,
--       14 rate learning (1|0: RATE_LIMIT_LEARNING; off, learned and seeded rates are dropped);
--       then eight values per session: id, weight, max concurrency (0 = none), rpm (0 = none), burst,
--       enabled (1|0), priority (integer; higher tiers are preferred), tpm (0 = none).
-- Returns {sessions in the pool, 'ok' | 'lost', events}: 'lost' answers a renew whose claim had
-- expired and was dropped (the replica syncs again).
local replica, ttl_ms, step = ARGV[2], tonumber(ARGV[3]), ARGV[4]
local mine = claim_prefix .. replica
local collecting = mine .. ':' .. ARGV[5]
local now = now_ms()
redis.call('HSETNX', pool_key, 'epoch_ms', now)
redis.call('HSET', pool_key, 'strategy', ARGV[1], 'breaker_threshold', ARGV[6],
  'breaker_timeout_ms', ARGV[7], 'breaker_timeout_max_ms', ARGV[8], 'half_open_probes', ARGV[9],
  'cooldown_max_ms', ARGV[10], 'breaker_window', ARGV[11], 'breaker_min_calls', ARGV[12],
  'breaker_failure_ratio', ARGV[13], 'rate_learning', ARGV[14])
strategy = ARGV[1]
half_open_probes = tonumber(ARGV[9])
cooldown_max_ms = tonumber(ARGV[10])
rate_learning = ARGV[14] ~= '0'
epoch_ms = tonumber(redis.call('HGET', pool_key, 'epoch_ms'))

local function claimed(id)
  if redis.call('ZSCORE', mine, id) then return true end
  for _, r in ipairs(redis.call('ZRANGE', claims_key, 0, -1)) do
    if redis.call('ZSCORE', claim_prefix .. r, id) then return true end
  end
  return false
end

local function leave_unless_claimed(id)
  if not claimed(id) then redis.call('ZREM', members_key, id) end
  refresh(id, now)
end

-- Drop replica r's claim: the sessions only it named leave the pool.
local function drop_claim(r)
  local named = redis.call('ZRANGE', claim_prefix .. r, 0, -1)
  redis.call('DEL', claim_prefix .. r)
  redis.call('ZREM', claims_key, r)
  for _, id in ipairs(named) do leave_unless_claimed(id) end
end

local function drop_expired_claims()
  for _, r in ipairs(redis.call('ZRANGEBYSCORE', claims_key, '-inf', now, 'LIMIT', 0, housekeeping_batch)) do
    drop_claim(r)
  end
end

local function reply()
  return {redis.call('ZCARD', members_key), 'ok', events}
end

if step == 'renew' then
  local alive = redis.call('ZSCORE', claims_key, replica)
  if alive then redis.call('ZADD', claims_key, now + ttl_ms, replica) end
  drop_expired_claims()
  if not alive then return {redis.call('ZCARD', members_key), 'lost', events} end
  return reply()
end
if step == 'leave' then
  drop_claim(replica)
  return reply()
end

-- A session's rate after its configuration: a configured rpm is its rate unless a lower one
-- was learned or seeded since (a configured rpm is never exceeded); a rate the configuration
-- gave and no longer gives is dropped, and so are learned and seeded ones with learning off.
local function configure_rate(key, rpm)
  local r = redis.call('HMGET', key, 'rate_rpm', 'rate_source')
  local rate, source = tonumber(r[1]), r[2]
  local kept = rate_learning and rate ~= nil and source ~= nil and source ~= 'configured'
  if rpm > 0 and not (kept and rate < rpm) then
    redis.call('HSET', key, 'rate_rpm', string.format('%.3f', rpm), 'rate_source', 'configured')
  elseif rpm <= 0 and source ~= nil and not kept then
    redis.call('HDEL', key, 'rate_rpm', 'rate_source')
  end
end

-- 'part' and 'last': record the limits of the sessions named, collect their ids in order.
local position = redis.call('ZCARD', collecting)
for i = 15, #ARGV, 8 do
  local key = session_prefix .. ARGV[i]
  redis.call('HSET', key, 'weight', ARGV[i + 1], 'max_concurrency',
    ARGV[i + 2], 'rpm', ARGV[i + 3], 'burst', ARGV[i + 4], 'enabled', ARGV[i + 5],
    'priority', ARGV[i + 6], 'tpm', ARGV[i + 7])
  configure_rate(key, tonumber(ARGV[i + 3]) or 0)
  position = position + 1
  redis.call('ZADD', collecting, position, ARGV[i])
end
if step == 'part' then
  redis.call('PEXPIRE', collecting, ttl_ms)
  return reply()
end

-- 'last': the collected ids become this replica's claim; new ones join in configuration order.
if position > 0 then redis.call('RENAME', collecting, mine) else redis.call('DEL', mine) end
redis.call('PERSIST', mine)
redis.call('ZADD', claims_key, now + ttl_ms, replica)
for _, id in ipairs(redis.call('ZRANGE', mine, 0, -1)) do
  if not redis.call('ZSCORE', members_key, id) then
    local ordinal = redis.call('HINCRBY', pool_key, 'next_ordinal', 1)
    redis.call('ZADD', members_key, ordinal, id)
    redis.call('HSET', session_prefix .. id, 'ordinal', ordinal)
    redis.call('HSETNX', session_prefix .. id, 'health', '1.0000')
  end
end
drop_expired_claims()
-- Sessions this configuration no longer names leave unless another claim holds them; every
-- member is refreshed, since a strategy change rescores them all.
for _, id in ipairs(redis.call('ZRANGE', members_key, 0, -1)) do leave_unless_claimed(id) end
housekeeping(now, true)
return reply()
