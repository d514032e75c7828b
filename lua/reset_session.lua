-- reset_session.lua: an operator clears a session's cooldown, circuit breaker and counters.
-- KEYS: the pool's base name; every key is derived from it, see common.lua.
-- ARGV: 1 session id.
-- Returns {state, events}, or {'unknown', events} when the pool has no such session.
-- Kept: live leases (in_flight), the schedules of the rpm and unit quotas (they protect the
-- upstream, not the session), the configuration, last_used, and a disable (enable undoes that).
local id = ARGV[1]
if not redis.call('ZSCORE', members_key, id) then return {'unknown', events} end
local key = session_prefix .. id
local now = now_ms()
local breaker = redis.call('HGET', key, 'breaker') or 'closed'
if breaker ~= 'closed' then table.insert(events, {id, 'breaker', breaker, 'closed'}) end
redis.call('HSET', key, 'cooldown_until', 0, 'rl_streak', 0, 'breaker', 'closed',
  'breaker_failures', 0, 'breaker_trips', 0, 'breaker_until', 0, 'probes', 0,
  'success_rate', '1.0000', 'health', '1.0000', 'health_at', now, 'reset_at', now)
redis.call('HDEL', key, 'rl_last_at', 'breaker_opened_at', 'latency_ms', 'last_error',
  'last_error_at', 'n_success', 'n_rate_limited', 'n_auth', 'n_server', 'n_network', 'n_timeout',
  'n_other', 'n_unused', 'cooldowns', 'leases', 'leases_expired')
return {refresh(id, now), events}
