-- renew.lua: extend a live lease (a long streaming response is still running).
-- KEYS: the pool's base name; every key is derived from it, see common.lua.
-- ARGV: 1 lease id, 2 lease TTL (ms): the new expiry is now + TTL.
-- Returns {'ok', expiry ms, events} or {'gone', 0, events} when the lease is no longer live
-- (released or expired).
local lease_id, ttl_ms = ARGV[1], tonumber(ARGV[2])
-- Housekeeping first: a lease past its expiry is gone even if no call has reaped it yet.
local now = now_ms()
housekeeping(now)
if not redis.call('ZSCORE', leases_key, lease_id) then return {'gone', 0, events} end
local expiry = now + ttl_ms
redis.call('ZADD', leases_key, 'XX', expiry, lease_id)
due(expiry)
return {'ok', expiry, events}
