-- common.lua: the prelude the loader puts in front of every other script of this folder, so that
-- each script sees one key layout and one definition of a session's eligibility.
--
-- KEYS (the same list for every script; built by broker/keys.py, all under the pool's hash tag):
--   1 pool       HASH  strategy, epoch_ms, next_ordinal, rr_cursor
--   2 members    ZSET  session id -> ordinal, every session the configuration names
--   3 avail      ZSET  session id -> selection score, the sessions eligible right now
--   4 cooling    ZSET  session id -> cooldown deadline (ms)
--   5 leases     ZSET  lease id -> expiry (ms), live leases
--   6 owners     HASH  lease id -> session id, live leases and expired ones not yet released
--   7 expired    ZSET  lease id -> when it expired (ms), expired before its release arrived
--   8 released   ZSET  lease id -> when it was released (ms), remembered so a replay counts once
--   9 disabled   SET   session ids that are disabled (by configuration or an operator)
--  10 the prefix of session hashes: session <id> lives at KEYS[10] .. <id>. Passed as a key so
--     that its hash tag decides the slot; every key a script touches shares that tag.
-- ARGV[1] (every script): how long an ended lease id is remembered (ms).
-- Script-specific arguments start at ARGV[2].
local pool_key, members_key, avail_key, cooling_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local leases_key, owners_key, expired_key, released_key = KEYS[5], KEYS[6], KEYS[7], KEYS[8]
local disabled_key, session_prefix = KEYS[9], KEYS[10]
local lease_memory_ms = tonumber(ARGV[1])
-- How many due entries one call processes per housekeeping pass; the rest wait for the next call.
local batch = 256

local pool_meta = redis.call('HMGET', pool_key, 'strategy', 'epoch_ms')
local strategy = pool_meta[1] or 'health'
local epoch_ms = tonumber(pool_meta[2]) or 0

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- The score a session carries in avail: the order each strategy picks in (see broker/selection.py).
local function selection_score(f)
  if strategy == 'round-robin' then return tonumber(f.ordinal) or 0 end
  local last_used = math.max(0, (tonumber(f.last_used) or 0) - epoch_ms)
  if strategy == 'lru' then return last_used end
  -- 2^41 ms is 69 years: the in-flight count orders first, least recently used breaks ties.
  if strategy == 'least-busy' then return math.min(tonumber(f.in_flight) or 0, 4095) * 2^41 + last_used end
  if strategy == 'health' then return (tonumber(f.weight) or 1) * (tonumber(f.health) or 1) end
  return 0
end

-- Recompute one session's state and its membership of avail, cooling and disabled.
local function refresh(id, now)
  local key = session_prefix .. id
  local v = redis.call('HMGET', key, 'enabled', 'disabled_reason', 'cooldown_until', 'in_flight',
    'max_concurrency', 'ordinal', 'last_used', 'weight', 'health')
  local f = {enabled = v[1], disabled_reason = v[2], cooldown_until = tonumber(v[3]) or 0,
    in_flight = tonumber(v[4]) or 0, max_concurrency = tonumber(v[5]) or 0, ordinal = v[6],
    last_used = v[7], weight = v[8], health = v[9]}
  local state
  if not redis.call('ZSCORE', members_key, id) then
    state = 'removed'
  elseif f.enabled == '0' or (f.disabled_reason and f.disabled_reason ~= '') then
    state = 'disabled'
  elseif f.cooldown_until > now then
    state = 'cooling'
  elseif f.max_concurrency > 0 and f.in_flight >= f.max_concurrency then
    state = 'busy'
  else
    state = 'available'
  end
  if state == 'available' then
    redis.call('ZADD', avail_key, selection_score(f), id)
  else
    redis.call('ZREM', avail_key, id)
  end
  if state == 'cooling' then
    redis.call('ZADD', cooling_key, f.cooldown_until, id)
  else
    redis.call('ZREM', cooling_key, id)
  end
  if state == 'disabled' then
    redis.call('SADD', disabled_key, id)
  else
    redis.call('SREM', disabled_key, id)
  end
  redis.call('HSET', key, 'state', state)
  return state
end

-- Leases whose holder stopped renewing them: give their slots back.
local function expire_leases(now)
  local due = redis.call('ZRANGEBYSCORE', leases_key, '-inf', now, 'LIMIT', 0, batch)
  for _, lease in ipairs(due) do
    redis.call('ZREM', leases_key, lease)
    redis.call('ZADD', expired_key, now, lease)
    local id = redis.call('HGET', owners_key, lease)
    if id then
      local key = session_prefix .. id
      if redis.call('HINCRBY', key, 'in_flight', -1) < 0 then redis.call('HSET', key, 'in_flight', 0) end
      redis.call('HINCRBY', key, 'leases_expired', 1)
      refresh(id, now)
    end
  end
end

-- Sessions whose cooldown deadline has passed go back to avail (or to busy/disabled).
local function end_cooldowns(now)
  local due = redis.call('ZRANGEBYSCORE', cooling_key, '-inf', now, 'LIMIT', 0, batch)
  for _, id in ipairs(due) do
    redis.call('ZREM', cooling_key, id)
    refresh(id, now)
  end
end

-- Ended lease ids older than the memory window are forgotten.
local function forget_ended(now)
  local horizon = now - lease_memory_ms
  local old = redis.call('ZRANGEBYSCORE', expired_key, '-inf', horizon, 'LIMIT', 0, batch)
  for _, lease in ipairs(old) do
    redis.call('HDEL', owners_key, lease)
    redis.call('ZREM', expired_key, lease)
  end
  redis.call('ZREMRANGEBYSCORE', released_key, '-inf', horizon)
end

local function housekeeping(now)
  expire_leases(now)
  end_cooldowns(now)
  forget_ended(now)
end
