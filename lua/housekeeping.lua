-- housekeeping.lua: bring the pool's state up to date without leasing anything: due cooldowns and
-- quotas end, due breakers half-open, dead replicas' leases expire. Run before an operator or a
-- metrics scrape reads the pool, so a quiet pool does not show states that have run out.
-- KEYS: the pool's base name; every key is derived from it, see common.lua.
-- ARGV: none.
-- Returns {events}: no reply of its own. Bounded like every housekeeping pass (see common.lua).
housekeeping(now_ms(), true)
return {events}
