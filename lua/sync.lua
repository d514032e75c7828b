-- sync.lua: make the pool's sessions those of this replica's configuration.
-- KEYS: the pool's keys, see common.lua.
-- ARGV: 1 lease memory (ms), 2 strategy, 3 generation (unique per sync), 4 final (1 | 0: a large
--       pool is sent in several calls, the last one final), 5 breaker threshold (0 = no breaker),
--       6 breaker timeout (ms), 7 longest breaker timeout (ms), 8 half-open probes,
--       9 429 streak window (ms), 10 quota slack (factor >= 1 on each rpm interval), then six
--       values per session:
--       id, weight, max concurrency (0 = none), rpm (0 = none), burst, enabled (1 | 0).
-- The pool-wide values are stored in the pool hash: the last replica to start sets them.
-- On the final call, sessions no generation-stamped call named leave the pool: never leased again,
-- their hash (history, in-flight leases) kept. Returns {number of sessions in the pool, events}.
local generation, final = ARGV[3], ARGV[4] == '1'
local now = now_ms()
redis.call('HSETNX', pool_key, 'epoch_ms', now)
redis.call('HSET', pool_key, 'strategy', ARGV[2], 'breaker_threshold', ARGV[5],
  'breaker_timeout_ms', ARGV[6], 'breaker_timeout_max_ms', ARGV[7], 'half_open_probes', ARGV[8],
  'streak_window_ms', ARGV[9], 'quota_slack', ARGV[10])
strategy = ARGV[2]
half_open_probes = tonumber(ARGV[8])
quota_slack = tonumber(ARGV[10])
epoch_ms = tonumber(redis.call('HGET', pool_key, 'epoch_ms'))

for i = 11, #ARGV, 6 do
  local id = ARGV[i]
  local key = session_prefix .. id
  if not redis.call('ZSCORE', members_key, id) then
    local ordinal = redis.call('HINCRBY', pool_key, 'next_ordinal', 1)
    redis.call('ZADD', members_key, ordinal, id)
    redis.call('HSET', key, 'ordinal', ordinal)
    redis.call('HSETNX', key, 'health', '1.0000')
  end
  redis.call('HSET', key, 'weight', ARGV[i + 1], 'max_concurrency', ARGV[i + 2],
    'rpm', ARGV[i + 3], 'burst', ARGV[i + 4], 'enabled', ARGV[i + 5], 'sync_generation', generation)
  if not final then refresh(id, now) end
end
if final then
  -- A strategy change rescores every session, so the final call refreshes them all.
  for _, id in ipairs(redis.call('ZRANGE', members_key, 0, -1)) do
    if redis.call('HGET', session_prefix .. id, 'sync_generation') ~= generation then
      redis.call('ZREM', members_key, id)
    end
    refresh(id, now)
  end
  housekeeping(now)
end
return {redis.call('ZCARD', members_key), events}
