-- sync.lua: the pool's sessions are those that some live replica's configuration names.
-- Each replica claims the ids of its configuration for a TTL, renewed while it runs. A session
-- stays while a live claim names it, so replicas that briefly disagree (a rollout, a Secret that
-- reaches pods at different moments) never take each other's sessions away; it leaves when the
-- last claim naming it is replaced, dropped or expires: never leased again, its hash (history,
-- in-flight leases) kept, and it comes back with that history if it is named again.
-- KEYS: the pool's base name (common.lua). Two more keys derived from it: <base>:claims, a ZSET
--       replica id -> claim deadline (ms), and the claim sets: the ids replica r names are the
--       ZSET <base>:claim: .. r (id -> position).
-- ARGV: 1 lease memory (ms), 2 strategy, 3 replica id, 4 claim TTL (ms), 5 step: 'part' (more
--       sessions follow), 'last' (the configuration is complete), 'renew' (no sessions: extend the
--       claim) or 'leave' (drop the claim), 6 generation (unique per sync: a multi-call sync
--       collects into claim set .. ':' .. generation), then the pool-wide tunables, stored in the
--       pool hash (the last replica to sync sets them): 7 breaker threshold (0 = no breaker),
--       8 breaker timeout (ms), 9 longest breaker timeout (ms), 10 half-open probes, 11 429
--       streak window (ms), 12 quota slack (factor >= 1 on each rpm and tpm interval); then
--       eight values per session: id, weight, max concurrency (0 = none), rpm (0 = none), burst,
--       enabled (1|0), priority (integer; higher tiers are preferred), tpm (0 = none).
-- Returns {sessions in the pool, 'ok' | 'lost', events}: 'lost' answers a renew whose claim had
-- expired and was dropped (the replica syncs again).
local claims_key, claim_prefix = base .. ':claims', base .. ':claim:'
local replica, ttl_ms, step = ARGV[3], tonumber(ARGV[4]), ARGV[5]
local mine = claim_prefix .. replica
local collecting = mine .. ':' .. ARGV[6]
local now = now_ms()
redis.call('HSETNX', pool_key, 'epoch_ms', now)
redis.call('HSET', pool_key, 'strategy', ARGV[2], 'breaker_threshold', ARGV[7],
  'breaker_timeout_ms', ARGV[8], 'breaker_timeout_max_ms', ARGV[9], 'half_open_probes', ARGV[10],
  'streak_window_ms', ARGV[11], 'quota_slack', ARGV[12])
strategy = ARGV[2]
half_open_probes = tonumber(ARGV[10])
quota_slack = tonumber(ARGV[12])
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
  for _, r in ipairs(redis.call('ZRANGEBYSCORE', claims_key, '-inf', now, 'LIMIT', 0, batch)) do
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

-- 'part' and 'last': record the limits of the sessions named, collect their ids in order.
local position = redis.call('ZCARD', collecting)
for i = 13, #ARGV, 8 do
  redis.call('HSET', session_prefix .. ARGV[i], 'weight', ARGV[i + 1], 'max_concurrency',
    ARGV[i + 2], 'rpm', ARGV[i + 3], 'burst', ARGV[i + 4], 'enabled', ARGV[i + 5],
    'priority', ARGV[i + 6], 'tpm', ARGV[i + 7])
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
