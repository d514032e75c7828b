-- acquire.lua: lease one eligible session of the pool.
-- KEYS: the pool's base name; every key is derived from it, see common.lua.
-- ARGV: 1 lease id (made by the client, so a resent call is recognised), 2 lease TTL (ms),
--       3 random seed (integer), 4 ticket id ('' when the caller will not wait), 5 the ticket's
--       arrival (ms of the store's clock; 0 = now), 6 ticket TTL (ms), 7 units to pre-charge to
--       the leased session's unit budget (0 = none; its release settles them against the units
--       reported), 8.. session ids this request already tried.
-- The pick is made in the highest priority tier that has an eligible session this request has
-- not tried, by the pool's strategy within that tier (round-robin keeps a cursor per tier).
-- While tickets wait anywhere in the fleet only the oldest may take a session: any other caller
-- gets 'queued' and, with a ticket id, joins (or renews its place in) the queue. A caller that
-- finds nothing eligible joins it too. A ticket holder that gets a session leaves the queue and
-- wakes the next in line.
-- Returns {'ok', session id, lease id, expiry ms, probe (1 | 0), granted at ms, events}
--      or {'none', reason, earliest ms or -1, now ms, {available, cooling, busy, disabled, open,
--          quota}, events}, reason being 'empty' | 'disabled' | 'tried' (every eligible one was
--          tried by this request) | 'queued' (older requests wait) | else whichever of 'open' |
--          'cooling' | 'quota' | 'busy' blocks the most sessions (a tie: the first of these), and
--          earliest the soonest moment any of them may end
--      or {'ended', lease id, events} when the lease id belongs to a lease that already ended.
local lease_id, ttl_ms = ARGV[1], tonumber(ARGV[2])
math.randomseed(tonumber(ARGV[3]))
local ticket, arrival, ticket_ttl = ARGV[4], tonumber(ARGV[5]), tonumber(ARGV[6])
local precharge = tonumber(ARGV[7])
local excluded, n_excluded = {}, #ARGV - 7
for i = 8, #ARGV do excluded[ARGV[i]] = true end

local owner = redis.call('HGET', owners_key, lease_id)
if owner then
  local expiry = redis.call('ZSCORE', leases_key, lease_id)
  local probe = redis.call('SISMEMBER', probes_key, lease_id)
  -- A resent call: the grant time is not kept, the expiry less the TTL stands in for it.
  if expiry then return {'ok', owner, lease_id, tonumber(expiry), probe, tonumber(expiry) - ttl_ms, events} end
  return {'ended', lease_id, events}
end
if redis.call('ZSCORE', released_key, lease_id) then return {'ended', lease_id, events} end

local now = now_ms()
housekeeping(now)
if arrival <= 0 then arrival = now end

-- The oldest ticket still renewed; stale ones (their replica gave up or died) are dropped.
local function oldest_ticket()
  for _ = 1, housekeeping_batch do
    local head = redis.call('ZRANGE', waiters_key, 0, 0)[1]
    if not head then return nil end
    if (tonumber(redis.call('HGET', tickets_key, head)) or 0) > now then return head end
    redis.call('ZREM', waiters_key, head)
    redis.call('HDEL', tickets_key, head)
  end
  return redis.call('ZRANGE', waiters_key, 0, 0)[1]
end

local function hold_ticket()
  if ticket == '' then return end
  redis.call('ZADD', waiters_key, 'NX', arrival, ticket)
  redis.call('HSET', tickets_key, ticket, now + ticket_ttl)
end

local function first_allowed(ids)
  for _, id in ipairs(ids) do if not excluded[id] then return id end end
  return nil
end

-- A uniform proposal from a tier's set, accepted with probability score / max score: an exact
-- weighted choice without reading the whole set. Gives up after a bounded number of proposals.
local function weighted(set, n)
  -- The top score only matters to the health strategy's acceptance test.
  local top = strategy == 'health' and redis.call('ZREVRANGE', set, 0, 0, 'WITHSCORES') or {}
  local max_score, fallback = tonumber(top[2]), nil
  for _ = 1, 64 do
    local index = math.random(n) - 1
    local pick = redis.call('ZRANGE', set, index, index, 'WITHSCORES')
    if not excluded[pick[1]] then
      fallback = pick[1]
      if strategy ~= 'health' or math.random() * max_score < tonumber(pick[2]) then return pick[1] end
    end
  end
  return fallback or first_allowed(redis.call('ZRANGE', set, 0, n_excluded))
end

-- The pool's strategy within one tier; nil when the tier has nothing this request may take.
local function choose_in(tier)
  local set = tier_prefix .. tier
  local n = redis.call('ZCARD', set)
  if n == 0 then return nil end
  if strategy == 'round-robin' then
    local cursor = redis.call('HGET', pool_key, cursor_field(tier)) or '-1'
    return first_allowed(redis.call('ZRANGEBYSCORE', set, '(' .. cursor, '+inf', 'LIMIT', 0, n_excluded + 1))
      or first_allowed(redis.call('ZRANGE', set, 0, n_excluded))
  end
  if strategy == 'random' or strategy == 'health' then return weighted(set, n) end
  return first_allowed(redis.call('ZRANGE', set, 0, n_excluded))
end

-- Tiers best first: a lower one serves only when no session above it may be taken. Reads one
-- entry per distinct priority, never the sessions of the tiers it passes over.
local function choose_tiered()
  for _, tier in ipairs(redis.call('ZREVRANGE', tiers_key, 0, -1)) do
    local id = choose_in(tier)
    if id then return id, tier end
  end
  return nil
end

-- avail is the truth, the tier sets an index of it: a pick avail lacks (an entry left behind by
-- a replica still running the scripts from before tiers, during a rollout) is dropped and the
-- choice made again.
local function choose()
  for _ = 1, 8 do
    local id, tier = choose_tiered()
    if not id or redis.call('ZSCORE', avail_key, id) then return id, tier end
    local set = tier_prefix .. tier
    redis.call('ZREM', set, id)
    if redis.call('ZCARD', set) == 0 then redis.call('ZREM', tiers_key, tier) end
    -- The session no longer has the place its hash names (see place_tier in common.lua).
    local key = session_prefix .. id
    if redis.call('HGET', key, 'avail_tier') == tier then redis.call('HDEL', key, 'avail_tier') end
  end
  return nil
end

-- Why nothing is eligible, and the earliest moment something will be (without scanning).
local function unavailable(forced)
  local total = redis.call('ZCARD', members_key)
  local c = {available = redis.call('ZCARD', avail_key), cooling = redis.call('ZCARD', cooling_key),
    open = redis.call('ZCARD', open_key), quota = redis.call('ZCARD', quota_key),
    disabled = redis.call('SCARD', disabled_key)}
  c.busy = total - c.available - c.cooling - c.open - c.quota - c.disabled
  local earliest = -1
  for _, timed in ipairs({cooling_key, open_key, quota_key}) do
    local first = redis.call('ZRANGE', timed, 0, 0, 'WITHSCORES')
    if first[2] and (earliest < 0 or tonumber(first[2]) < earliest) then earliest = tonumber(first[2]) end
  end
  if c.busy > 0 then
    -- A busy session frees up when a lease ends: at the latest when the first one expires.
    local first = redis.call('ZRANGE', leases_key, 0, 0, 'WITHSCORES')
    if first[2] and (earliest < 0 or tonumber(first[2]) < earliest) then earliest = tonumber(first[2]) end
  end
  -- The reason is what blocks the most sessions; a tie goes to the first in the order of the
  -- states (open, cooling, quota, busy). 'busy' also stands for nothing counted at all.
  local reason, most = 'busy', 0
  for _, group in ipairs({'open', 'cooling', 'quota', 'busy'}) do
    if c[group] > most then reason, most = group, c[group] end
  end
  if total == 0 then reason = 'empty'
  elseif c.available > 0 then reason = 'tried'
  elseif c.disabled == total then reason = 'disabled' end
  -- 'queued' keeps the earliest moment: a waiter behind an older one sleeps until then (a paced
  -- session's next slot), not until a wake that a grant leaving nothing available never sends.
  if forced and reason ~= 'empty' and reason ~= 'disabled' then reason = forced end
  local counts = {c.available, c.cooling, c.busy, c.disabled, c.open, c.quota}
  return {'none', reason, earliest, now, counts, events}
end

local head = oldest_ticket()
if head and head ~= ticket then
  hold_ticket()
  return unavailable('queued')
end
local id, tier = choose()
if not id then
  hold_ticket()
  return unavailable()
end
local from_queue = ticket ~= '' and redis.call('ZREM', waiters_key, ticket) == 1
if from_queue then redis.call('HDEL', tickets_key, ticket) end

local key = session_prefix .. id
local expiry = now + ttl_ms
redis.call('ZADD', leases_key, expiry, lease_id)
due(expiry)
redis.call('HSET', owners_key, lease_id, id)
-- The session is read once: its counters are written back in one write (the script runs alone:
-- no increment races), and its new state is settled from what was read and written.
local f = read_session(key)
-- Its place in avail as read: kept without a write when the lease leaves its score as it was.
local placed = f.state == 'available' and selection_score(f) or nil
f.in_flight, f.leases, f.last_used = f.in_flight + 1, f.leases + 1, now
local updates = {'in_flight', f.in_flight, 'leases', f.leases, 'last_used', now}
local probe = 0
if f.breaker == 'half_open' then
  probe = 1
  f.probes = redis.call('HINCRBY', key, 'probes', 1)
  redis.call('SADD', probes_key, lease_id)
end
if f.pace_rpm > 0 then
  -- GCRA: this request takes the next slot of the session's pace (its rate), kept to the
  -- microsecond and rounded up (the slow side of the upstream's limit), like the unit schedule:
  -- rounding each slot up to a whole ms would slow a fast session (rpm 10,000: 6.12 ms a slot)
  -- by up to a sixth.
  local interval = quota_interval(f.pace_rpm)
  if f.tat > 0 and now - f.tat < interval then
    -- Taken within an interval of its slot: demand drives the session at its pace, the guard of
    -- a learned rate's increase (a rate not used is not raised). Rides on the write below.
    table.insert(updates, 'paced_at')
    table.insert(updates, now)
  end
  f.tat = math.ceil((math.max(f.tat, now) + interval) * 1000) / 1000
  table.insert(updates, 'tat')
  table.insert(updates, string.format('%.3f', f.tat))
end
redis.call('HSET', key, unpack(updates))
if strategy == 'round-robin' then redis.call('HSET', pool_key, cursor_field(tier), f.ordinal) end
if precharge > 0 then
  redis.call('HSET', charges_key, lease_id, precharge)
  charge_units(key, precharge, now)
  refresh(id, now)  -- the unit budget changed in the hash: judge from a fresh read
else
  settle(id, key, f, now, placed)
end
-- The next in line may take what is left; with nothing left, waking it would be a wasted try.
if from_queue and redis.call('ZCARD', avail_key) > 0 then redis.call('PUBLISH', wake_channel, '') end
return {'ok', id, lease_id, expiry, probe, now, events}
