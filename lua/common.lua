-- common.lua: the definitions every other script of this folder shares (one key layout, one
-- definition of a session's eligibility). The loader (broker/preamble.py) puts it once in the
-- function library, after the preamble and before one function per script: its code runs once,
-- when Redis loads the library, and every call starts with begin(KEYS[1]) below.
--
-- KEYS: one key, the pool's base name `sb:{<pool>}` (broker/keys.py). Every other key is derived
-- from it by the preamble the loader puts before this file (broker/preamble.py): one local per
-- member of the key layout (`pool_key`, `members_key`, `session_prefix`, ...; what each holds is
-- in broker/keys.py and docs/redis-keys.md), and one per code constant of broker/constants.py
-- the scripts use, named as the constant in lower case (`lease_memory_ms`, `unit_window_ms`,
-- ...). This deviates on purpose from "every key a script touches is passed in KEYS": packing
-- ~25 key names into each call was the largest single cost of the hot scripts on the client
-- (docs/benchmarks.md, "Proxy overhead"). It stays Cluster-safe: every derived key carries the
-- base's hash tag `{<pool>}`, so it lies in the slot of KEYS[1].
-- Pool-wide operator settings come from the pool hash, written by sync (the last replica to sync
-- wins), read once per call by begin() below: strategy, breaker_threshold, breaker_timeout_ms,
-- breaker_timeout_max_ms, breaker_window, breaker_min_calls, breaker_failure_ratio,
-- half_open_probes, cooldown_max_ms. Per-call facts come in ARGV, from ARGV[1].
-- Every script returns its own reply followed by a list of events, one per transition it made:
-- {session id, 'state', from, to} or {session id, 'breaker', from, to}.

-- The pool-wide settings and the events of the call under way: set by begin(), which every
-- operation runs first. In the function library these locals outlive a call (the library's
-- code before the functions runs once, at load), so begin() sets every one of them.
local strategy, epoch_ms, half_open_probes, cooldown_max_ms, due_at, breaker_threshold
local rate_learning, breaker_timeout_ms, breaker_timeout_max_ms, breaker_window
local breaker_min_calls, breaker_failure_ratio, events

-- The start of every call: the key names of the pool named `name` (KEYS[1]; see the preamble's
-- bind), its settings in one read, no events yet.
local function begin(name)
  bind(name)
  local pool_meta = redis.call('HMGET', pool_key, 'strategy', 'epoch_ms', 'half_open_probes',
    'cooldown_max_ms', 'due_at', 'breaker_threshold', 'rate_learning', 'breaker_timeout_ms',
    'breaker_timeout_max_ms', 'breaker_window', 'breaker_min_calls', 'breaker_failure_ratio')
  strategy = pool_meta[1] or 'health'
  epoch_ms = tonumber(pool_meta[2]) or 0
  half_open_probes = tonumber(pool_meta[3]) or default_half_open_probes
  cooldown_max_ms = tonumber(pool_meta[4]) or default_rate_limit_cooldown_max_ms
  due_at = tonumber(pool_meta[5]) or 0
  breaker_threshold = pool_meta[6]
  -- Rate learning (docs/learning.md) is on unless sync wrote '0' (RATE_LIMIT_LEARNING=false).
  rate_learning = pool_meta[7] ~= '0'
  breaker_timeout_ms, breaker_timeout_max_ms = tonumber(pool_meta[8]), tonumber(pool_meta[9])
  breaker_window = tonumber(pool_meta[10]) or default_breaker_window
  breaker_min_calls = tonumber(pool_meta[11]) or default_breaker_min_calls
  breaker_failure_ratio = tonumber(pool_meta[12]) or default_breaker_failure_ratio
  events = {}
end

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
-- the slack absorbs the jitter between a grant here and the request's arrival upstream. The same
-- spacing per unit under a tpm.
local function quota_interval(rpm)
  return minute_ms / rpm * quota_slack
end

-- When a session's pace (GCRA: one request per interval, bursts of `burst`) admits its next
-- request; 0 when it is unpaced.
local function quota_at(f)
  if f.pace_rpm <= 0 or f.tat == 0 then return 0 end
  return f.tat - quota_interval(f.pace_rpm) * (math.max(f.pace_burst, 1) - 1)
end

-- A unit (token) budget is a GCRA on units: each unit takes 60000/tpm ms (with the same slack as
-- rpm) of the session's unit schedule `unit_tat`, and a session may run up to unit_window_ms (one
-- minute's worth) ahead of now. A charge may overdraw it (units are known only at release): the
-- session is then out of quota until the schedule is back within that window.

-- When a session's unit budget has something left again (whole ms); 0 without a tpm.
local function units_at(f)
  if f.tpm <= 0 or f.unit_tat == 0 then return 0 end
  return math.ceil(f.unit_tat - unit_window_ms)
end

-- Whole units a session's budget has left at `now` (the room before the window's edge); 0 while
-- it is overdrawn, -1 without a tpm. What operators see (lua/units.lua).
local function units_left(tpm, unit_tat, now)
  if tpm <= 0 then return -1 end
  local room = now + unit_window_ms - math.max(unit_tat, now)
  return math.max(0, math.floor(room / quota_interval(tpm)))
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
-- by sync or a restore moves it rather than leaving a stale entry behind. A session whose
-- `avail_tier` is its priority is in that tier's set, so the tier is in tiers already; `stays`:
-- its score is unchanged too (see settle), so nothing is written.
local function place_tier(key, id, f, available, score, stays)
  local old = f.avail_tier
  if old and (not available or old ~= f.priority) then
    local set = tier_prefix .. old
    redis.call('ZREM', set, id)
    if redis.call('ZCARD', set) == 0 then redis.call('ZREM', tiers_key, old) end
  end
  if available and old ~= f.priority then
    redis.call('ZADD', tier_prefix .. f.priority, score, id)
    redis.call('ZADD', tiers_key, tonumber(f.priority), f.priority)
    redis.call('HSET', key, 'avail_tier', f.priority)
  elseif available and not stays then
    redis.call('ZADD', tier_prefix .. f.priority, score, id)
  elseif not available and old then
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
    'unit_tat', 'leases', 'rate_rpm', 'rate_source')
  -- The pace: the session's rate (configured, seeded from headers or learned from 429s), or its
  -- configured rpm where no sync has written a rate yet. A configured rpm keeps its burst; a
  -- learned or seeded rate spaces requests evenly, so the next 429 is rare (LEARNED_BURST).
  local pace_rpm, pace_burst = tonumber(v[23]) or 0, tonumber(v[14]) or 1
  if pace_rpm <= 0 then pace_rpm = tonumber(v[13]) or 0
  elseif v[24] ~= 'configured' then pace_burst = learned_burst end
  -- A learned rate is what got through already: the quota slack (for a limit the upstream
  -- enforces to the letter) does not go on top of it.
  if v[24] == 'learned' then pace_rpm = pace_rpm * quota_slack end
  -- An operator's weight (admin API, CLI) wins over the configured one until it is cleared.
  return {pace_rpm = pace_rpm, pace_burst = pace_burst,
    enabled = v[1], disabled_reason = v[2], cooldown_until = tonumber(v[3]) or 0,
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
-- `placed` (optional): the score of the session as read, when it was recorded available and the
-- caller changed nothing but its lease counters (acquire). Its place in avail and its tier and
-- its half-open membership were written from the fields as read (every write of them is
-- followed by a settle), so a session still available with that score is left as it is.
local function settle(id, key, f, now, placed)
  local breaker_read = f.breaker
  if f.breaker == 'open' and f.breaker_until <= now then
    f.breaker, f.probes = 'half_open', 0
    redis.call('HSET', key, 'breaker', 'half_open', 'probes', 0)
    table.insert(events, {id, 'breaker', 'open', 'half_open'})
  end
  -- The quota state covers both budgets: requests (rpm) and units (tpm); the later one decides.
  local admits_at = math.max(quota_at(f), units_at(f))
  local state
  -- With `placed` it is a member: it was one when last settled, and a removal settles it.
  if placed == nil and not redis.call('ZSCORE', members_key, id) then state = 'removed'
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
  local stays = not moved and state == 'available' and placed == score
  if moved or (state == 'available' and not stays) then
    place(avail_key, id, state == 'available', score)
  end
  place_tier(key, id, f, state == 'available', score, stays)
  if moved or state == 'cooling' then place_due(cooling_key, id, state == 'cooling', f.cooldown_until) end
  if moved or state == 'open' then place_due(open_key, id, state == 'open', f.breaker_until) end
  if moved or state == 'quota' then place_due(quota_key, id, state == 'quota', admits_at) end
  if state == 'disabled' then redis.call('SADD', disabled_key, id)
  elseif moved then redis.call('SREM', disabled_key, id) end
  -- The half-open set follows the breaker; with `placed`, it was in step when read.
  if placed == nil or moved or f.breaker ~= breaker_read then
    if f.breaker == 'half_open' and state ~= 'removed' then redis.call('SADD', half_open_key, id)
    else redis.call('SREM', half_open_key, id) end
  end
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
  local due = redis.call('ZRANGEBYSCORE', leases_key, '-inf', now, 'LIMIT', 0, housekeeping_batch)
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
  for _, id in ipairs(redis.call('ZRANGEBYSCORE', key, '-inf', now, 'LIMIT', 0, housekeeping_batch)) do
    redis.call('ZREM', key, id)
    refresh(id, now)
  end
end

-- Ended lease ids older than the memory window are forgotten.
local function forget_ended(now)
  local horizon = now - lease_memory_ms
  local old = redis.call('ZRANGEBYSCORE', expired_key, '-inf', horizon, 'LIMIT', 0, housekeeping_batch)
  for _, lease in ipairs(old) do
    redis.call('HDEL', owners_key, lease)
    redis.call('HDEL', charges_key, lease)
    redis.call('ZREM', expired_key, lease)
  end
  local stale = math.min(redis.call('ZCOUNT', released_key, '-inf', horizon), housekeeping_batch)
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
