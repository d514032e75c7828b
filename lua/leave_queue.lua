-- leave_queue.lua: a waiting request gives up (its deadline passed, or its client went away).
-- KEYS: the pool's base name; every key is derived from it, see common.lua.
-- ARGV: 1 ticket id.
-- Returns {1 if the ticket was queued else 0, events}. When it was, the next in line is woken.
local ticket = ARGV[1]
local queued = redis.call('ZREM', waiters_key, ticket)
redis.call('HDEL', tickets_key, ticket)
if queued == 1 then redis.call('PUBLISH', wake_channel, '') end
return {queued, events}
