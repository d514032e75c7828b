-- release.lua: end a lease and record what happened on it.
-- KEYS: the pool's base name; every key is derived from it, see common.lua.
-- ARGV: 1 lease id, 2 outcome (success | rate_limited | auth | server | network | timeout |
--       other | unused), 3 latency (ms, -1 unknown), 4 cooldown (ms; -1 none): on rate_limited
--       the base of an escalating cooldown, otherwise a wait the upstream's headers asked for
--       (nothing left until reset), 5 detail (a status code or error class; never a secret),
--       6 units the attempt consumed (-1 = not reported: a pre-charge stands, except on
--       'unused', which refunds it). What acquire pre-charged is settled: the difference is
--       charged or refunded. The health constants come from the preamble, the longest cooldown
--       (cooldown_max_ms) from the pool hash (common.lua).
--       The 401/403 judgement's two (docs/how-it-works.md): 7 the request's kind (a hash of its
--       method and first path segments; '' unknown), 8 the session that answered this same
--       request 401/403 before, in this pool ('' none).
--       Rate learning (docs/learning.md): 9 when the lease was granted (store ms, acquire's
--       reply; 0 unknown), 10 whether a rate_limited cooldown (ARGV 4) is a wait the upstream
--       stated (1) or RATE_LIMIT_COOLDOWN for want of one (0: with learning on, the cap of the
--       probe cooldown), 11 a rate the answer's headers state (requests a minute; 0 none).
-- Returns {status, session id or '', cooldown deadline ms or 0, 1 if this call started the
--   cooldown (the session was not cooling before it) else 0, events} where status is
--   'released' (the lease was live), 'late' (it had expired; the outcome still counts),
--   'duplicate' (released before: nothing changes) or 'unknown' (no such lease remembered).
local lease_id, outcome, latency = ARGV[1], ARGV[2], tonumber(ARGV[3])
local cooldown_ms, detail, units = tonumber(ARGV[4]), ARGV[5], tonumber(ARGV[6])
local request_kind, refused_by = ARGV[7] or '', ARGV[8] or ''
local granted_at, wait_stated, seed_rpm = tonumber(ARGV[9]) or 0, ARGV[10] == '1', tonumber(ARGV[11]) or 0

-- Housekeeping first: a lease past its expiry is 'late' even if no call has reaped it yet.
local now = now_ms()
housekeeping(now)
if redis.call('ZSCORE', released_key, lease_id) then return {'duplicate', '', 0, 0, events} end
local id = redis.call('HGET', owners_key, lease_id)
if not id then return {'unknown', '', 0, 0, events} end

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
due(now + lease_memory_ms)
local probe = end_probe(lease_id, key)
-- Units are settled once: a replay is 'duplicate' above and never reaches this line.
local precharged = tonumber(redis.call('HGET', charges_key, lease_id))
if precharged then redis.call('HDEL', charges_key, lease_id) else precharged = 0 end
if units < 0 then units = outcome == 'unused' and 0 or precharged end
charge_units(key, units - precharged, now)
redis.call('HINCRBY', key, 'n_' .. outcome, 1)
if outcome == 'unused' then
  refresh(id, now)
  return {status, id, 0, 0, events}
end
if outcome ~= 'success' then
  redis.call('HSET', key, 'last_error', detail ~= '' and (outcome .. ': ' .. detail) or outcome,
    'last_error_at', now)
end

-- The session's fields read below, in one read; what the steps below write goes out in one
-- write (`updates`) before the breaker's, which reads back its own counters.
local h = redis.call('HMGET', key, 'success_rate', 'latency_ms', 'health_at', 'cooldown_until',
  'rl_streak', 'rl_last_at', 'breaker', 'auth_suspect_at', 'auth_suspect_kind', 'breaker_calls')
local updates = {}
local function update(field, value)
  table.insert(updates, field)
  table.insert(updates, value)
end

-- Health: a success-rate average that drifts back to 1 while no news arrives (half-life), and a
-- latency average; a rate limit says nothing about health, its cooldown deals with it.
if outcome ~= 'rate_limited' then
  local rate, avg_latency = tonumber(h[1]) or 1, tonumber(h[2])
  local idle = math.max(0, now - (tonumber(h[3]) or now))
  rate = 1 - (1 - rate) * 0.5 ^ (idle / health_half_life_ms)
  rate = rate + health_alpha * ((outcome == 'success' and 1 or 0) - rate)
  if outcome == 'success' and latency >= 0 then
    avg_latency = avg_latency and (avg_latency + health_alpha * (latency - avg_latency)) or latency
  end
  local speed = 1
  if avg_latency and avg_latency > health_latency_target_ms then
    speed = math.max(0.5, health_latency_target_ms / avg_latency)
  end
  update('success_rate', string.format('%.4f', rate))
  update('health', string.format('%.4f', math.max(health_floor, rate * speed)))
  update('health_at', now)
  if avg_latency then update('latency_ms', math.floor(avg_latency + 0.5)) end
end

-- The learned rate (docs/learning.md): seeded from the headers, decreased once per wave of
-- 429s with no usable wait, increased after quiet; a probe cooldown instead of a flat one.
local deadline, old_deadline, probed = 0, tonumber(h[4]) or 0, false
local learning = rate_learning and (outcome == 'success' or outcome == 'rate_limited' or seed_rpm > 0)
if learning then
  local r = redis.call('HMGET', key, 'rate_rpm', 'rate_source', 'rate_decreased_at',
    'rate_raised_at', 'rate_raises', 'rate_ok_n', 'rate_ok_from', 'probe_streak', 'rpm',
    'paced_at', 'rate_seed_rpm', 'rl_last_at', 'rate_ceiling_rpm')
  local rate, source = tonumber(r[1]), r[2]
  local decreased_at, raised_at = tonumber(r[3]) or 0, tonumber(r[4]) or 0
  local ok_n, ok_from = tonumber(r[6]) or 0, tonumber(r[7]) or now
  local configured = tonumber(r[9]) or 0
  local cap = configured > 0 and configured or rate_max_rpm
  local last_429 = tonumber(r[12]) or 0
  local writes = {}
  local function write(field, value)
    table.insert(writes, field)
    table.insert(writes, value)
  end
  local function set_rate(value, new_source)
    rate = math.max(rate_min_rpm, math.min(value, cap))
    if configured > 0 and rate >= configured then new_source = 'configured' end
    source = new_source
    write('rate_rpm', string.format('%.3f', rate))
    write('rate_source', new_source)
  end
  -- A stated rate seeds the session before any 429; rewritten only when the statement changes.
  local seeded = tonumber(r[11])
  if seed_rpm > 0 and (not seeded or math.abs(seed_rpm - seeded) > rate_seed_tolerance * seeded) then
    set_rate(seed_rpm, 'header')
    write('rate_seed_rpm', string.format('%.3f', seed_rpm))
    write('rate_raises', 0)
  end
  local fresh = granted_at > decreased_at
  if outcome == 'success' and fresh then
    -- The achieved rate: successes of leases granted since the last decrease (at the pace in
    -- force), since ok_from: the window slides (scaled down) once it is twice a bucket long,
    -- and starts over at the first such success (the probe cooldown and a hole are not time at
    -- the pace).
    if now - ok_from >= 2 * rate_bucket_ms then
      ok_n = ok_n * rate_bucket_ms / (now - ok_from)
      ok_from = now - rate_bucket_ms
    end
    write('rate_ok_n', string.format('%.3f', ok_n + 1))
    write('rate_ok_from', ok_from)
  end
  if outcome == 'success' then
    write('probe_streak', 0)
    -- Additive increase: after a quiet period at the pace (no decrease, raise or 429), and only
    -- if demand drove the session at its pace during it (acquire's paced_at): a rate not used
    -- is not raised. Below the rate the last 429 came at (the ceiling) the step is half the way
    -- back to it; above it, it starts small and doubles per consecutive quiet period, to a cap:
    -- slow near the limit just found, fast when the limit has grown away from it.
    if rate and rate < cap then
      local quiet_from = math.max(decreased_at, raised_at, last_429)
      local quiet = math.max(rate_quiet_ms, rate_quiet_intervals * quota_interval(rate))
      if (tonumber(r[10]) or 0) > quiet_from and now - quiet_from >= quiet then
        local raises, ceiling = tonumber(r[5]) or 0, tonumber(r[13]) or 0
        if rate >= ceiling then raises = raises + 1 end
        -- Below the ceiling: half the way back to it at least (BIC's binary search).
        local step = math.max(1, rate * math.min(rate_step * 2 ^ raises, rate_step_max),
          (ceiling - rate) / 2)
        set_rate(rate + step, source == 'header' and 'header' or 'learned')
        write('rate_raised_at', now)
        write('rate_raises', raises)
        redis.call('HINCRBY', key, 'rate_increases', 1)
      end
    end
  elseif outcome == 'rate_limited' and not wait_stated then
    -- A 429 with no usable wait. It decreases the rate only if its lease was granted after
    -- the last decrease (one decrease per wave, fleet-wide: NewReno's rule) and the
    -- session succeeded since then (else it is in a hole, an exhausted window, not too fast).
    local decreased = fresh and ok_n > 0
    if decreased then
      -- A few successes say little of a rate: under rate_sample_min the rate in force stands.
      local achieved = ok_n * minute_ms / math.max(now - ok_from, 1000)
      local ceiling = achieved
      if rate then ceiling = ok_n < rate_sample_min and rate or math.min(achieved, rate) end
      set_rate(learned_rate_decrease * ceiling, 'learned')
      write('rate_ceiling_rpm', string.format('%.3f', ceiling))
      write('rate_decreased_at', now)
      write('rate_ok_n', 0)
      write('rate_raises', 0)
      redis.call('HDEL', key, 'rate_ok_from')
      redis.call('HINCRBY', key, 'rate_decreases', 1)
    end
    probed = true
    if fresh and not decreased then
      -- In a hole: the probe cooldown, short, doubling per 429 of a streak up to
      -- RATE_LIMIT_COOLDOWN; a 429 of a lease granted before the previous 429 says nothing new
      -- and does not escalate.
      local streak = tonumber(r[8]) or 0
      if granted_at >= last_429 or streak == 0 then streak = streak + 1 end
      local wait = math.min(probe_cooldown_ms * 2 ^ (streak - 1), math.max(cooldown_ms, 0))
      deadline = math.max(old_deadline, math.floor(now + wait))
      write('probe_streak', streak)
      redis.call('HSET', key, 'cooldown_until', deadline)
      redis.call('HINCRBY', key, 'cooldowns', 1)
    else
      -- A decrease: the slower pace spaces the next request, no cooldown on top of it. A 429 of
      -- a lease granted before the last decrease: counted, nothing more.
      deadline = old_deadline > now and old_deadline or 0
    end
    redis.call('HSET', key, 'rl_last_at', now)
  end
  if #writes > 0 then redis.call('HSET', key, unpack(writes)) end
end

-- Cooldowns are absolute deadlines and only ever move later. Repeated 429s within the streak
-- window double the wait each time; a 429 from a request sent while the session was already
-- cooling says nothing new and does not escalate. A success ends the streak.
if outcome == 'rate_limited' and not probed then
  local streak = tonumber(h[5]) or 0
  if old_deadline <= now then
    streak = (now - (tonumber(h[6]) or 0) > rate_limit_streak_window_ms) and 1 or streak + 1
  end
  streak = math.max(streak, 1)
  local wait = math.min(cooldown_ms * 2 ^ (streak - 1), math.max(cooldown_max_ms, cooldown_ms))
  deadline = math.max(old_deadline, math.floor(now + wait))
  redis.call('HSET', key, 'cooldown_until', deadline, 'rl_streak', streak, 'rl_last_at', now)
  redis.call('HINCRBY', key, 'cooldowns', 1)
elseif outcome ~= 'rate_limited' and cooldown_ms >= 0 then
  deadline = math.max(old_deadline, now + cooldown_ms)
  redis.call('HSET', key, 'cooldown_until', deadline)
  redis.call('HINCRBY', key, 'cooldowns', 1)
end
if outcome == 'success' then update('rl_streak', 0) end

-- 401/403: evidence against the credential, or the request's own answer? A refusal makes the
-- session suspect, nothing more (a cooldown would turn a path refused to everyone into "every
-- session cooling" for the paths that work); it is disabled (out until an operator re-enables it) when
-- the same request then succeeds on another session, or on a second refusal while suspect: of
-- another kind of request, or of this kind after another session succeeded on it. A second
-- session refusing the same request clears the first one's suspicion: that is the request's
-- answer. A success clears the session's own suspicion.
local function disable_for_auth(session_key)
  redis.call('HSET', session_key, 'disabled_reason', 'auth', 'disabled_at', now)
  redis.call('HDEL', session_key, 'auth_suspect_at', 'auth_suspect_kind')
end
local function suspect_of(suspect_key)
  local s = redis.call('HMGET', suspect_key, 'auth_suspect_at', 'auth_suspect_kind')
  local at = tonumber(s[1]) or 0
  if at > 0 and now - at <= auth_suspect_window_ms then return at, s[2] or '' end
  return nil
end
local first_key = (refused_by ~= '' and refused_by ~= id) and session_prefix .. refused_by or nil
if first_key and suspect_of(first_key) then
  if outcome == 'success' then
    disable_for_auth(first_key)
    refresh(refused_by, now)
  elseif outcome == 'auth' then
    redis.call('HDEL', first_key, 'auth_suspect_at', 'auth_suspect_kind')
  end
end
if outcome == 'success' then
  if h[8] then redis.call('HDEL', key, 'auth_suspect_at', 'auth_suspect_kind') end
  local last_ok = tonumber(redis.call('HGET', kinds_key, request_kind)) or 0
  if now - last_ok >= kind_write_every_ms then
    if last_ok == 0 and redis.call('HLEN', kinds_key) >= kinds_max then redis.call('DEL', kinds_key) end
    redis.call('HSET', kinds_key, request_kind, now)
  end
elseif outcome == 'auth' and not first_key then
  local at, kind = suspect_of(key)
  local ok_since = at and (tonumber(redis.call('HGET', kinds_key, request_kind)) or 0) >= at
  if at and (kind ~= request_kind or ok_since) then
    disable_for_auth(key)
  else
    redis.call('HSET', key, 'auth_suspect_at', now, 'auth_suspect_kind', request_kind)
  end
end

-- A failure the upstream answered at once (5xx) or never saw (a connection error) did not use
-- the session's rate: its slot of the schedule at its pace (acquire.lua's GCRA: a configured,
-- seeded or learned rate) goes back, never before now, so an unused schedule builds up no more
-- than its burst. A timeout may have been served: it keeps its slot.
local function give_back_slot(session_key)
  local f = read_session(session_key)
  if f.pace_rpm <= 0 or f.tat <= now then return end
  redis.call('HSET', session_key, 'tat',
    string.format('%.3f', math.max(f.tat - quota_interval(f.pace_rpm), now)))
end

-- Circuit breaker (which outcomes count: server, network, timeout; docs/how-it-works.md). Two
-- triggers open it: THRESHOLD consecutive failures, or a failure ratio at or above the pool's
-- over the last `breaker_window` calls (successes and failures, kept as a string of 0s and 1s),
-- once `breaker_min_calls` were made. After its timeout it half-opens for a few probes,
-- fleet-wide; a probe's success closes it and ends the escalation, its failure opens it again
-- (doubling the timeout from the second failed probe in a row on).
local breaker = h[7] or 'closed'
local failed = outcome == 'server' or outcome == 'network' or outcome == 'timeout'
-- The pool's breaker settings were read with the rest of the pool hash (begin, common.lua).
local window = breaker_window
local calls = h[10] or ''
if failed or outcome == 'success' then
  calls = string.sub(calls .. (failed and '1' or '0'), -window)
  update('breaker_calls', calls)
end
if outcome == 'success' then update('breaker_failures', 0) end
if #updates > 0 then redis.call('HSET', key, unpack(updates)) end
local threshold = tonumber(breaker_threshold) or 0
if failed then
  local failures = redis.call('HINCRBY', key, 'breaker_failures', 1)
  local _, failed_calls = string.gsub(calls, '1', '')
  local min_calls, ratio = breaker_min_calls, breaker_failure_ratio
  local too_many = failures >= threshold
    or (#calls >= math.max(min_calls, 1) and failed_calls >= ratio * #calls)
  if threshold > 0 and ((breaker == 'half_open' and probe) or (breaker == 'closed' and too_many)) then
    local trips = redis.call('HINCRBY', key, 'breaker_trips', 1)
    -- One failed probe keeps the first timeout (a flaky session's probe may meet a stray
    -- error); from the second in a row each doubles it.
    local open_for = math.min(breaker_timeout_ms * 2 ^ math.max(trips - 2, 0), breaker_timeout_max_ms)
    -- The window starts over: the calls that opened it must not open it again after the probe.
    redis.call('HSET', key, 'breaker', 'open', 'breaker_until', math.floor(now + open_for),
      'breaker_opened_at', now, 'breaker_calls', '', 'breaker_failures', 0)
    table.insert(events, {id, 'breaker', breaker, 'open'})
  end
  if outcome ~= 'timeout' then give_back_slot(key) end
elseif outcome == 'success' then
  if breaker == 'half_open' and probe then
    redis.call('HSET', key, 'breaker', 'closed', 'breaker_trips', 0)
    table.insert(events, {id, 'breaker', 'half_open', 'closed'})
  end
end
refresh(id, now)
-- Only the call that started the cooldown says so: the other releases of the same wave (from any
-- replica) find it running, and its start is logged once for the fleet.
local started = (deadline > now and old_deadline <= now) and 1 or 0
return {status, id, deadline, started, events}
