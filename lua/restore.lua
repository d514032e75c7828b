-- restore.lua: import one session's exported health state (or the pool's own fields) into this
-- pool, e.g. after a move to a new Redis. Idempotent: a replay writes the same values again.
-- KEYS: the pool's base name; every key is derived from it, see common.lua.
-- ARGV: 1 session id ('' for the pool hash), 2 ordinal ('' to append), then field, value pairs (checked against an allow-list by the caller: never lease state).
-- The pool hash keeps what it already has (a live pool's configuration wins); a session's
-- fields are written over. A session new to the pool joins members; the next sync drops it
-- again unless a replica's configuration names it. Live leases and in_flight are not touched.
-- Returns {state ('' for the pool hash), events}.
local id, ordinal = ARGV[1], tonumber(ARGV[2])
if id == '' then
  for i = 3, #ARGV, 2 do
    if ARGV[i] == 'next_ordinal' then
      local current = tonumber(redis.call('HGET', pool_key, 'next_ordinal')) or 0
      redis.call('HSET', pool_key, 'next_ordinal', math.max(current, tonumber(ARGV[i + 1]) or 0))
    else
      redis.call('HSETNX', pool_key, ARGV[i], ARGV[i + 1])
    end
  end
  return {'', events}
end
local key = session_prefix .. id
if not redis.call('ZSCORE', members_key, id) then
  if not ordinal then ordinal = redis.call('HINCRBY', pool_key, 'next_ordinal', 1) end
  local next_ordinal = tonumber(redis.call('HGET', pool_key, 'next_ordinal')) or 0
  if ordinal > next_ordinal then redis.call('HSET', pool_key, 'next_ordinal', ordinal) end
  redis.call('ZADD', members_key, ordinal, id)
  redis.call('HSET', key, 'ordinal', ordinal)
end
for i = 3, #ARGV, 2 do redis.call('HSET', key, ARGV[i], ARGV[i + 1]) end
redis.call('HSETNX', key, 'health', '1.0000')
return {refresh(id, now_ms()), events}
