-- acquire.lua: lease one eligible session of the pool.
-- KEYS: the pool's keys, see common.lua.
-- ARGV: 1 lease memory (ms), 2 lease id (made by the client, so a resent call is recognised),
--       3 lease TTL (ms), 4 random seed (integer), 5.. session ids this request already tried.
-- Returns {'ok', session id, lease id, expiry ms, probe (1 | 0), events}
--      or {'none', reason, earliest ms or -1, now ms, {available, cooling, busy, disabled, open,
--          quota}, events}, reason being 'empty' | 'disabled' | 'tried' (every eligible one was
--          tried by this request) | 'busy' | 'cooling' | 'open' | 'quota' (the soonest to end)
--      or {'ended', lease id, events} when the lease id belongs to a lease that already ended.
local lease_id, ttl_ms = ARGV[2], tonumber(ARGV[3])
math.randomseed(tonumber(ARGV[4]))
local excluded, n_excluded = {}, #ARGV - 4
for i = 5, #ARGV do excluded[ARGV[i]] = true end

local owner = redis.call('HGET', owners_key, lease_id)
if owner then
  local expiry = redis.call('ZSCORE', leases_key, lease_id)
  local probe = redis.call('SISMEMBER', probes_key, lease_id)
  if expiry then return {'ok', owner, lease_id, tonumber(expiry), probe, events} end
  return {'ended', lease_id, events}
end
if redis.call('ZSCORE', released_key, lease_id) then return {'ended', lease_id, events} end

local now = now_ms()
housekeeping(now)

local function first_allowed(ids)
  for _, id in ipairs(ids) do if not excluded[id] then return id end end
  return nil
end

-- A uniform proposal from avail, accepted with probability score / max score: an exact weighted
-- choice without reading the whole set. Gives up after a bounded number of proposals.
local function weighted(n)
  local top = redis.call('ZREVRANGE', avail_key, 0, 0, 'WITHSCORES')
  local max_score, fallback = tonumber(top[2]), nil
  for _ = 1, 64 do
    local index = math.random(n) - 1
    local pick = redis.call('ZRANGE', avail_key, index, index, 'WITHSCORES')
    if not excluded[pick[1]] then
      fallback = pick[1]
      if strategy ~= 'health' or math.random() * max_score < tonumber(pick[2]) then return pick[1] end
    end
  end
  return fallback or first_allowed(redis.call('ZRANGE', avail_key, 0, n_excluded))
end

local function choose()
  local n = redis.call('ZCARD', avail_key)
  if n == 0 then return nil end
  if strategy == 'round-robin' then
    local cursor = redis.call('HGET', pool_key, 'rr_cursor') or '-1'
    return first_allowed(redis.call('ZRANGEBYSCORE', avail_key, '(' .. cursor, '+inf', 'LIMIT', 0, n_excluded + 1))
      or first_allowed(redis.call('ZRANGE', avail_key, 0, n_excluded))
  end
  if strategy == 'random' or strategy == 'health' then return weighted(n) end
  return first_allowed(redis.call('ZRANGE', avail_key, 0, n_excluded))
end

-- Why nothing is eligible, and the earliest moment something will be (without scanning).
local function unavailable()
  local total = redis.call('ZCARD', members_key)
  local c = {available = redis.call('ZCARD', avail_key), cooling = redis.call('ZCARD', cooling_key),
    open = redis.call('ZCARD', open_key), quota = redis.call('ZCARD', quota_key),
    disabled = redis.call('SCARD', disabled_key)}
  c.busy = total - c.available - c.cooling - c.open - c.quota - c.disabled
  local reason, earliest = nil, -1
  for _, timed in ipairs({{'cooling', cooling_key}, {'open', open_key}, {'quota', quota_key}}) do
    local first = redis.call('ZRANGE', timed[2], 0, 0, 'WITHSCORES')
    if first[2] and (earliest < 0 or tonumber(first[2]) < earliest) then
      reason, earliest = timed[1], tonumber(first[2])
    end
  end
  if c.busy > 0 then
    -- A busy session frees up when a lease ends: at the latest when the first one expires.
    local first = redis.call('ZRANGE', leases_key, 0, 0, 'WITHSCORES')
    if first[2] and (earliest < 0 or tonumber(first[2]) < earliest) then earliest = tonumber(first[2]) end
    reason = 'busy'
  end
  if total == 0 then reason = 'empty'
  elseif c.available > 0 then reason = 'tried'
  elseif c.disabled == total then reason = 'disabled' end
  local counts = {c.available, c.cooling, c.busy, c.disabled, c.open, c.quota}
  return {'none', reason, earliest, now, counts, events}
end

local id = choose()
if not id then return unavailable() end

local key = session_prefix .. id
local expiry = now + ttl_ms
redis.call('ZADD', leases_key, expiry, lease_id)
redis.call('HSET', owners_key, lease_id, id)
redis.call('HINCRBY', key, 'in_flight', 1)
redis.call('HINCRBY', key, 'leases', 1)
redis.call('HSET', key, 'last_used', now)
local s = redis.call('HMGET', key, 'breaker', 'rpm', 'tat', 'ordinal')
local probe = 0
if s[1] == 'half_open' then
  probe = 1
  redis.call('HINCRBY', key, 'probes', 1)
  redis.call('SADD', probes_key, lease_id)
end
local rpm = tonumber(s[2]) or 0
if rpm > 0 then
  -- GCRA: this request takes the next slot of the session's rpm schedule (rounded up to whole
  -- ms, erring on the slow side of the upstream's limit).
  redis.call('HSET', key, 'tat', math.ceil(math.max(tonumber(s[3]) or 0, now) + quota_interval(rpm)))
end
if strategy == 'round-robin' then redis.call('HSET', pool_key, 'rr_cursor', s[4]) end
refresh(id, now)
return {'ok', id, lease_id, expiry, probe, events}
