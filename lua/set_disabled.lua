-- set_disabled.lua: an operator disables a session (with a reason) or enables it again.
-- KEYS: the pool's base name; every key is derived from it, see common.lua.
-- ARGV: 1 session id, 2 reason ('' enables the session).
-- Returns {state, events}, or {'unknown', events} when the pool has no such session.
local id, reason = ARGV[1], ARGV[2]
if not redis.call('ZSCORE', members_key, id) then return {'unknown', events} end
local key = session_prefix .. id
local now = now_ms()
if reason == '' then
  redis.call('HDEL', key, 'disabled_reason', 'disabled_at')
else
  redis.call('HSET', key, 'disabled_reason', reason, 'disabled_at', now)
end
return {refresh(id, now), events}
