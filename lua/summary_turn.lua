-- summary_turn.lua: is it this replica's turn to log the fleet's health summary? One replica at a
-- time: the first call after HEALTH_CHECK_INTERVAL, or after enough requests, takes the turn.
-- KEYS: the pool's base name, see common.lua (uses summary: last_at, requests).
-- ARGV: 1 requests this replica served since its last call, 2 interval (ms), 3 requests that
--       call for a summary before the interval is over, 4 least time between two summaries (ms),
--       so heavy traffic cannot turn the summary into a flood.
-- Returns {1 (your turn) | 0, now ms, events}.
local requests, interval = tonumber(ARGV[1]), tonumber(ARGV[2])
local every, min_gap = tonumber(ARGV[3]), tonumber(ARGV[4])
local now = now_ms()
local s = redis.call('HMGET', summary_key, 'last_at', 'requests')
local last_at = tonumber(s[1]) or 0
local count = (tonumber(s[2]) or 0) + requests
if last_at == 0 then
  -- The fleet's first call starts the clock: a summary of a pool that has seen nothing yet
  -- would say nothing.
  redis.call('HSET', summary_key, 'last_at', now, 'requests', count)
  return {0, now, events}
end
local since = now - last_at
if since >= interval or (count >= every and since >= min_gap) then
  redis.call('HSET', summary_key, 'last_at', now, 'requests', 0)
  return {1, now, events}
end
if requests > 0 then redis.call('HSET', summary_key, 'requests', count) end
return {0, now, events}
