-- set_weight.lua: an operator overrides a session's weight (or clears the override); the session
-- is rescored in avail at once. The override outlives syncs, which only rewrite `weight`.
-- KEYS: the pool's base name; every key is derived from it, see common.lua.
-- ARGV: 1 session id, 2 weight (a number > 0, or '' to clear the override).
-- Returns {state, events}, or {'unknown', events} when the pool has no such session.
local id, weight = ARGV[1], ARGV[2]
if not redis.call('ZSCORE', members_key, id) then return {'unknown', events} end
local key = session_prefix .. id
if weight == '' then
  redis.call('HDEL', key, 'weight_override')
else
  redis.call('HSET', key, 'weight_override', weight)
end
return {refresh(id, now_ms()), events}
