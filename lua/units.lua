-- units.lua: read only. What the unit (tpm) budget of each named session has left now, with the
-- same GCRA arithmetic the scripts decide by (units_left in common.lua), so operators and the
-- scripts never disagree about a budget.
-- KEYS: the pool's base name; every key is derived from it, see common.lua.
-- ARGV: 1 the moment to answer for (ms of the store's clock, as the caller read it with TIME;
--       0 = now), 2.. session ids.
-- Returns {that moment, {units left per id, in order: -1 without a tpm, 0 while overdrawn},
--   events}.
local now = tonumber(ARGV[1])
if now <= 0 then now = now_ms() end
local left = {}
for i = 2, #ARGV do
  local u = redis.call('HMGET', session_prefix .. ARGV[i], 'tpm', 'unit_tat')
  left[i - 1] = units_left(tonumber(u[1]) or 0, tonumber(u[2]) or 0, now)
end
return {now, left, events}
