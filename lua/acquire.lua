-- acquire.lua: lease one eligible session of the pool.
-- KEYS: the pool's keys, see common.lua.
-- ARGV: 1 lease memory (ms), 2 lease id (made by the client, so a resent call is recognised),
--       3 lease TTL (ms), 4 random seed (integer), 5.. session ids this request already tried.
-- Returns {'ok', session id, lease id, expiry ms}
--      or {'none', reason, earliest ms or -1, now ms, available, cooling, busy, disabled}, where
--         reason is 'empty' | 'disabled' | 'cooling' | 'busy' | 'tried' (every eligible one tried)
--      or {'ended', lease id} when the lease id belongs to a lease that already ended.
local lease_id, ttl_ms = ARGV[2], tonumber(ARGV[3])
math.randomseed(tonumber(ARGV[4]))
local excluded, n_excluded = {}, #ARGV - 4
for i = 5, #ARGV do excluded[ARGV[i]] = true end

local owner = redis.call('HGET', owners_key, lease_id)
if owner then
  local expiry = redis.call('ZSCORE', leases_key, lease_id)
  if expiry then return {'ok', owner, lease_id, tonumber(expiry)} end
  return {'ended', lease_id}
end
if redis.call('ZSCORE', released_key, lease_id) then return {'ended', lease_id} end

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

local id = choose()
if not id then
  local total, disabled = redis.call('ZCARD', members_key), redis.call('SCARD', disabled_key)
  local available, cooling = redis.call('ZCARD', avail_key), redis.call('ZCARD', cooling_key)
  local busy = total - disabled - cooling - available
  local earliest = -1
  local first_cool = redis.call('ZRANGE', cooling_key, 0, 0, 'WITHSCORES')
  if first_cool[2] then earliest = tonumber(first_cool[2]) end
  if busy > 0 then
    local first_expiry = redis.call('ZRANGE', leases_key, 0, 0, 'WITHSCORES')
    if first_expiry[2] and (earliest < 0 or tonumber(first_expiry[2]) < earliest) then
      earliest = tonumber(first_expiry[2])
    end
  end
  local reason = 'busy'
  if total == 0 then reason = 'empty'
  elseif available > 0 then reason = 'tried'
  elseif disabled == total then reason = 'disabled'
  elseif busy == 0 then reason = 'cooling' end
  return {'none', reason, earliest, now, available, cooling, busy, disabled}
end

local key = session_prefix .. id
local expiry = now + ttl_ms
redis.call('ZADD', leases_key, expiry, lease_id)
redis.call('HSET', owners_key, lease_id, id)
redis.call('HINCRBY', key, 'in_flight', 1)
redis.call('HINCRBY', key, 'leases', 1)
redis.call('HSET', key, 'last_used', now)
if strategy == 'round-robin' then redis.call('HSET', pool_key, 'rr_cursor', redis.call('HGET', key, 'ordinal')) end
refresh(id, now)
return {'ok', id, lease_id, expiry}
