-- common.lua: the prelude the loader puts in front of every other script of this folder, so that
-- each script sees one key layout and one definition of a session's eligibility.
--
-- KEYS: one key, the pool's base name `sb:{<pool>}` (broker/keys.py). Every other key is derived
-- from it below. This deviates on purpose from "every key a script touches is passed in KEYS":
-- packing ~22 key names into each call was the largest single cost of the hot scripts on the
-- client (docs/benchmarks.md, "Proxy overhead"). It stays Cluster-safe: every derived key
-- carries the base's hash tag `{<pool>}`, so it lies in the slot of KEYS[1], as the session
-- hashes (derived from a prefix) always did. The derived keys, by their suffix:
--   :pool       HASH  strategy, epoch_ms, next_ordinal, rr_cursor, and the pool-wide tunables
--                     breaker_threshold, breaker_timeout_ms, breaker_timeout_max_ms,
--                     half_open_probes, streak_window_ms, quota_slack (written by sync), and
--                     due_at: no housekeeping is due before it (see housekeeping below)
--   :members    ZSET  session id -> ordinal, every session the configuration names
--   :avail      ZSET  session id -> selection score, the sessions eligible right now
--   :cooling    ZSET  session id -> cooldown deadline (ms)
--   :leases     ZSET  lease id -> expiry (ms), live leases
--   :owners     HASH  lease id -> session id, live leases and expired ones not yet released
--   :expired    ZSET  lease id -> when it expired (ms), expired before its release arrived
--   :released   ZSET  lease id -> when it was released (ms), remembered so a replay counts once
--   :disabled   SET   session ids that are disabled (by configuration, an operator or a 401/403)
--   :s:<id>     HASH  the state of session <id> (session_prefix .. id)
--   :open       ZSET  session id -> when its open circuit breaker half-opens (ms)
--   :quota      ZSET  session id -> when its rpm quota admits the next request (ms)
--   :probes     SET   lease ids that are half-open probes
--   :waiters    ZSET  ticket id -> arrival (ms): requests waiting anywhere in the fleet, oldest
--                     first (one ticket per replica's oldest waiter; see broker/queue.py)
--   :tickets    HASH  ticket id -> deadline (ms): a ticket not renewed by then is dropped
--   :wake       channel: a session becoming available is published here (payload: its id), so
--                     waiting replicas retry at once instead of polling
--   :half_open  SET   session ids whose circuit breaker is half-open (with :open: every breaker
--                     that is not closed, without reading the sessions)
--   :alerts     HASH  alert name -> when it started firing (ms): the fleet's open alerts
--   :outcomes   HASH  '<bucket>:n' / '<bucket>:e' -> upstream attempts / errors reported by the
--                     replicas in that time bucket (alerts.lua: the fleet's error rate)
--   :summary    HASH  whose turn the health summary is: last_at (ms), requests since then
--   :tiers      ZSET  priority -> priority: the priority tiers that have an eligible session
--   :avail:<p>  ZSET  session id -> selection score: the sessions of avail whose priority is <p>
--                     (avail is their union); acquire picks in the highest tier that has one
--   :charges    HASH  lease id -> units pre-charged at acquire, settled by its release
--   (sync.lua also derives :claims and :claim:<replica>, see its header.)
-- ARGV[1] (every script): how long an ended lease id is remembered (ms).
-- Script-specific arguments start at ARGV[2].
-- Every script returns its own reply followed by a list of events, one per transition it made:
-- {session id, 'state', from, to} or {session id, 'breaker', from, to}.
local base = KEYS[1]
local pool_key, members_key = base .. ':pool', base .. ':members'
local avail_key, cooling_key = base .. ':avail', base .. ':cooling'
local leases_key, owners_key = base .. ':leases', base .. ':owners'
local expired_key, released_key = base .. ':expired', base .. ':released'
local disabled_key, session_prefix = base .. ':disabled', base .. ':s:'
local open_key, quota_key, probes_key = base .. ':open', base .. ':quota', base .. ':probes'
local waiters_key, tickets_key = base .. ':waiters', base .. ':tickets'
local wake_channel = base .. ':wake'
local half_open_key, alerts_key = base .. ':half_open', base .. ':alerts'
local outcomes_key, summary_key = base .. ':outcomes', base .. ':summary'
local tiers_key, tier_prefix, charges_key = base .. ':tiers', base .. ':avail:', base .. ':charges'
local lease_memory_ms = tonumber(ARGV[1])
-- How many due entries one call processes per housekeeping pass; the rest wait for the next call.
local batch = 256
-- The longest a pool goes without a full housekeeping pass even when its due_at says nothing is
-- due: bounds the delay when a deadline was written without lowering due_at (a replica still
-- running scripts from before due_at, during a rollout; an operator's redis-cli).
local housekeeping_max_ms = 1000

local pool_meta = redis.call('HMGET', pool_key, 'strategy', 'epoch_ms', 'half_open_probes',
  'quota_slack', 'due_at', 'breaker_threshold')
local strategy = pool_meta[1] or 'health'
local epoch_ms = tonumber(pool_meta[2]) or 0
local half_open_probes = tonumber(pool_meta[3]) or 1
local quota_slack = tonumber(pool_meta[4]) or 1
local due_at = tonumber(pool_meta[5]) or 0
local breaker_threshold = pool_meta[6]
local events = {}

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
  if strategy == 'least-busy' then return math.min(f.in_flight, 4095) * 2^41 + last_used end
  if strategy == 'health' then return (tonumber(f.weight) or 1) * (tonumber(f.health) or 1) end
  return 0
end

-- The spacing of a session's requests under its rpm quota (ms), a little wider than 60000/rpm:
-- the slack absorbs the jitter between a grant here and the request's arrival upstream.
local function quota_interval(rpm)
  return 60000 / rpm * quota_slack
end

-- When a session's rpm quota (GCRA: one request per interval, bursts of `burst`) admits its
-- next request; 0 without a quota.
local function quota_at(f)
  if f.rpm <= 0 or f.tat == 0 then return 0 end
  return f.tat - quota_interval(f.rpm) * (math.max(f.burst, 1) - 1)
end

-- A unit (token) budget is a GCRA on units: each unit takes 60000/tpm ms (with the same slack as
-- rpm) of the session's unit schedule `unit_tat`, and a session may run up to one minute's worth
-- ahead of now. A charge may overdraw it (units are known only at release): the session is
-- then out of quota until the schedule is back within that minute.
local unit_window_ms = 60000

-- When a session's unit budget has something left again (whole ms); 0 without a tpm.
local function units_at(f)
  if f.tpm <= 0 or f.unit_tat == 0 then return 0 end
  return math.ceil(f.unit_tat - unit_window_ms)
end

-- Charge `units` (a refund when negative) to the session at `key`; counted in `units`, and
-- against its unit budget when it has a tpm. A refund never takes the schedule before now:
-- an unused budget does not accumulate beyond one minute's worth. The schedule keeps three
-- decimals (microseconds, rounded up): at a large tpm a charge is a fraction of a millisecond,
-- and rounding each one up to a whole ms would overcharge many times over.
local function charge_units(key, units, now)
  if units == 0 then return end
  redis.call('HINCRBY', key, 'units', units)
  local u = redis.call('HMGET', key, 'tpm', 'unit_tat')
  local tpm = tonumber(u[1]) or 0
  if tpm <= 0 then return end
  local tat = math.max(tonumber(u[2]) or 0, now) + units * quota_interval(tpm)
  redis.call('HSET', key, 'unit_tat', string.format('%.3f', math.ceil(math.max(tat, now) * 1000) / 1000))
end

-- The pool hash field of a tier's round-robin cursor (tier 0 keeps the name it always had).
local function cursor_field(tier)
  if tier == '0' then return 'rr_cursor' end
  return 'rr_cursor:' .. tier
end

-- Keep a session's entry in its tier's eligible set, and the set of non-empty tiers, in step
-- with avail. `avail_tier` in its hash remembers which tier set holds it, so a priority changed
-- by sync or a restore moves it rather than leaving a stale entry behind.
local function place_tier(key, id, f, available, score)
  local old = f.avail_tier
  if old and (not available or old ~= f.priority) then
    local set = tier_prefix .. old
    redis.call('ZREM', set, id)
    if redis.call('ZCARD', set) == 0 then redis.call('ZREM', tiers_key, old) end
  end
  if available then
    redis.call('ZADD', tier_prefix .. f.priority, score, id)
    redis.call('ZADD', tiers_key, tonumber(f.priority), f.priority)
    if old ~= f.priority then redis.call('HSET', key, 'avail_tier', f.priority) end
  elseif old then
    redis.call('HDEL', key, 'avail_tier')
  end
end

-- Every deadline written to a set housekeeping works through (leases, open, cooling, quota,
-- and the remembered lease ids' end of memory) passes here: due_at stays at or before the
-- earliest of them, so housekeeping can skip its pass while nothing is due.
local function due(deadline)
  if deadline < due_at then
    due_at = deadline
    redis.call('HSET', pool_key, 'due_at', deadline)
  end
end

local function place(key, member, yes, score)
  if yes then redis.call('ZADD', key, score, member) else redis.call('ZREM', key, member) end
end

local function place_due(key, member, yes, score)
  place(key, member, yes, score)
  if yes then due(score) end
end

-- The fields of the session hash at `key` that its state depends on, in one read (`state`: the
-- one last recorded; `leases`: acquire's count, read here to spare acquire a read of its own).
local function read_session(key)
  local v = redis.call('HMGET', key, 'enabled', 'disabled_reason', 'cooldown_until', 'in_flight',
    'max_concurrency', 'ordinal', 'last_used', 'weight', 'health', 'breaker', 'breaker_until',
    'probes', 'rpm', 'burst', 'tat', 'state', 'weight_override', 'priority', 'avail_tier', 'tpm',
    'unit_tat', 'leases')
  -- An operator's weight (admin API, CLI) wins over the configured one until it is cleared.
  return {enabled = v[1], disabled_reason = v[2], cooldown_until = tonumber(v[3]) or 0,
    in_flight = tonumber(v[4]) or 0, max_concurrency = tonumber(v[5]) or 0, ordinal = v[6],
    last_used = v[7], weight = v[17] or v[8], health = v[9], breaker = v[10] or 'closed',
    breaker_until = tonumber(v[11]) or 0, probes = tonumber(v[12]) or 0, rpm = tonumber(v[13]) or 0,
    burst = tonumber(v[14]) or 1, tat = tonumber(v[15]) or 0, state = v[16], priority = v[18] or '0',
    avail_tier = v[19], tpm = tonumber(v[20]) or 0, unit_tat = tonumber(v[21]) or 0,
    leases = tonumber(v[22]) or 0}
end

-- Recompute one session's state and its membership of avail, cooling, open, quota and disabled,
-- from `f`: its fields as read_session returned them, with what the caller wrote since.
-- The first matching reason wins: removed, disabled, open, cooling, quota, probing, busy.
local function settle(id, key, f, now)
  if f.breaker == 'open' and f.breaker_until <= now then
    f.breaker, f.probes = 'half_open', 0
    redis.call('HSET', key, 'breaker', 'half_open', 'probes', 0)
    table.insert(events, {id, 'breaker', 'open', 'half_open'})
  end
  -- The quota state covers both budgets: requests (rpm) and units (tpm); the later one decides.
  local admits_at = math.max(quota_at(f), units_at(f))
  local state
  if not redis.call('ZSCORE', members_key, id) then state = 'removed'
  elseif f.enabled == '0' or (f.disabled_reason and f.disabled_reason ~= '') then state = 'disabled'
  elseif f.breaker == 'open' then state = 'open'
  elseif f.cooldown_until > now then state = 'cooling'
  elseif admits_at > now then state = 'quota'
  elseif f.breaker == 'half_open' and f.probes >= half_open_probes then state = 'probing'
  elseif f.max_concurrency > 0 and f.in_flight >= f.max_concurrency then state = 'busy'
  else state = 'available' end
  local score = state == 'available' and selection_score(f) or 0
  -- refresh alone writes these sets and `state`, together: a session whose state stays what it
  -- was is in none of the other states' sets, so only its own state's entry is written again.
  local moved = state ~= f.state
  if moved or state == 'available' then place(avail_key, id, state == 'available', score) end
  place_tier(key, id, f, state == 'available', score)
  if moved or state == 'cooling' then place_due(cooling_key, id, state == 'cooling', f.cooldown_until) end
  if moved or state == 'open' then place_due(open_key, id, state == 'open', f.breaker_until) end
  if moved or state == 'quota' then place_due(quota_key, id, state == 'quota', admits_at) end
  if state == 'disabled' then redis.call('SADD', disabled_key, id)
  elseif moved then redis.call('SREM', disabled_key, id) end
  if f.breaker == 'half_open' and state ~= 'removed' then redis.call('SADD', half_open_key, id)
  else redis.call('SREM', half_open_key, id) end
  if moved then
    redis.call('HSET', key, 'state', state)
    table.insert(events, {id, 'state', f.state or '', state})
    if state == 'available' then redis.call('PUBLISH', wake_channel, id) end
  end
  return state
end

local function refresh(id, now)
  local key = session_prefix .. id
  return settle(id, key, read_session(key), now)
end

-- A probe lease that ends (released or expired) gives its half-open slot back; true if it was one.
local function end_probe(lease, key)
  if redis.call('SREM', probes_key, lease) == 0 then return false end
  if redis.call('HINCRBY', key, 'probes', -1) < 0 then redis.call('HSET', key, 'probes', 0) end
  return true
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
      end_probe(lease, key)
      refresh(id, now)
    end
  end
end

-- Sessions whose deadline in a time-ordered set has passed get their state recomputed.
local function end_due(key, now)
  for _, id in ipairs(redis.call('ZRANGEBYSCORE', key, '-inf', now, 'LIMIT', 0, batch)) do
    redis.call('ZREM', key, id)
    refresh(id, now)
  end
end

-- Ended lease ids older than the memory window are forgotten.
local function forget_ended(now)
  local horizon = now - lease_memory_ms
  local old = redis.call('ZRANGEBYSCORE', expired_key, '-inf', horizon, 'LIMIT', 0, batch)
  for _, lease in ipairs(old) do
    redis.call('HDEL', owners_key, lease)
    redis.call('HDEL', charges_key, lease)
    redis.call('ZREM', expired_key, lease)
  end
  local stale = math.min(redis.call('ZCOUNT', released_key, '-inf', horizon), batch)
  if stale > 0 then redis.call('ZREMRANGEBYRANK', released_key, 0, stale - 1) end
end

-- The score of a set's first entry plus `offset`, or `limit` if that is earlier or the set empty.
local function first_due(key, offset, limit)
  local first = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')[2]
  if first then return math.min(limit, tonumber(first) + offset) end
  return limit
end

-- Everything whose time has come: expired leases, ended breakers, cooldowns and quota waits,
-- lease ids past their memory. Skipped while now is before due_at (nothing can be due), unless
-- `always`; at most housekeeping_max_ms apart in any case. After a pass, due_at is the earliest
-- deadline left (now itself when a batch limit left due entries for the next call).
local function housekeeping(now, always)
  if not always and now < due_at and due_at <= now + housekeeping_max_ms then return end
  expire_leases(now)
  end_due(open_key, now)
  end_due(cooling_key, now)
  end_due(quota_key, now)
  forget_ended(now)
  local next_at = now + housekeeping_max_ms
  for _, key in ipairs({leases_key, open_key, cooling_key, quota_key}) do
    next_at = first_due(key, 0, next_at)
  end
  next_at = first_due(expired_key, lease_memory_ms, next_at)
  next_at = first_due(released_key, lease_memory_ms, next_at)
  due_at = math.max(now, next_at)
  redis.call('HSET', pool_key, 'due_at', due_at)
end
