"""Key names, bounds and tunables of the broker, each with the reason for its value."""

from typing import Final

#: Prefix of every Redis key the broker writes; a pool's keys are ``sb:{<pool>}:...``.
KEY_PREFIX: Final = "sb"
#: The fleet's list of pools for operators (broker/registry.py); outside every pool's hash tag.
POOLS_KEY: Final = f"{KEY_PREFIX}:pools"

#: Pool used when none is configured.
DEFAULT_POOL: Final = "default"

#: The master name Sentinel deployments use unless told otherwise (the example in sentinel.conf).
DEFAULT_SENTINEL_MASTER: Final = "mymaster"

#: Default lease lifetime. Long enough for an ordinary upstream call; streams renew theirs.
DEFAULT_LEASE_TTL_MS: Final = 60_000

#: How long an ended lease id is remembered. redis-py resends a command after a reconnect within
#: seconds, and a release can arrive after its lease expired; both must be recognised, but the
#: memory costs about 80 bytes per lease, so it is bounded.
LEASE_MEMORY_MS: Final = 120_000

#: After a 429 that carries no usable wait: with rate learning on, the cap of the escalating
#: probe cooldown (PROBE_COOLDOWN_MS doubling per 429 of a streak); with it off, the flat cooldown
#: the predecessor applied (60 s).
DEFAULT_RATE_LIMIT_COOLDOWN_MS: Final = 60_000

#: Upper bound for any cooldown, so an absurd Retry-After cannot take a session away for days.
DEFAULT_RATE_LIMIT_COOLDOWN_MAX_MS: Final = 3_600_000

#: The scripts read these code constants from the Lua preamble the loader generates from this
#: module (broker/preamble.py): each is written here only.

#: Health: the success rate drifts halfway back to 1 every half-life without news, so a session
#: that failed an hour ago is not punished forever.
HEALTH_HALF_LIFE_MS: Final = 300_000

#: Health: weight of one new observation in the moving averages (about the last 10 count most).
HEALTH_ALPHA: Final = 0.1

#: Health: the lowest score, so a flaky session keeps getting some traffic and can recover.
HEALTH_FLOOR: Final = 0.05

#: Health: average latency above this starts to lower the score, down to half at twice of it.
HEALTH_LATENCY_TARGET_MS: Final = 2_000

#: How long a replica's claim on the sessions of its configuration lasts unless renewed. A
#: session only a dead replica named leaves the pool this long after that replica's last renewal;
#: a live one renews every third of it, so a store unreachable for less keeps its claim.
DEFAULT_CLAIM_TTL_MS: Final = 60_000

#: Number of session ids one sync call sends; larger pools are synced in several calls.
SYNC_CHUNK: Final = 5_000

#: Circuit breaker defaults: consecutive failures that open it, how long it stays open at first
#: (doubling per trip that follows a failed probe, up to the longest), and the probes a half-open
#: breaker admits across the whole fleet. The first open is short (about one burst of a flaky
#: upstream): a session failing 2 s of every 6 s must not be benched for a minute.
DEFAULT_BREAKER_THRESHOLD: Final = 5
DEFAULT_BREAKER_TIMEOUT_MS: Final = 2_000
DEFAULT_BREAKER_TIMEOUT_MAX_MS: Final = 600_000
DEFAULT_HALF_OPEN_PROBES: Final = 1
#: Circuit breaker, the failure-rate window beside the consecutive count (as Resilience4j's
#: count-based window): over the last WINDOW calls that succeeded or failed, once at least
#: MIN_CALLS were made, a failure ratio at or above RATIO opens it too. Catches a session that
#: fails often without five failures in a row.
DEFAULT_BREAKER_WINDOW: Final = 20
DEFAULT_BREAKER_MIN_CALLS: Final = 10
DEFAULT_BREAKER_FAILURE_RATIO: Final = 0.5

#: 429s closer together than this (the later one from a request sent after the earlier cooldown
#: ended) count as a streak: each doubles the cooldown, until a success ends the streak.
RATE_LIMIT_STREAK_WINDOW_MS: Final = 600_000

#: Rate learning (docs/learning.md). A 429 with no usable wait and no success since the last
#: decrease (a hole: an exhausted window) cools the session for this long at first, doubling per
#: further such 429, up to RATE_LIMIT_COOLDOWN: the window's edge is found within a few probes.
#: A 429 that decreases the rate gets no cooldown: the slower pace spaces the next request.
PROBE_COOLDOWN_MS: Final = 1_000

#: The multiplicative decrease: the new rate is this share of the rate the session achieved just
#: before the 429. The achieved rate is already at or below the true limit, so a gentle cut is
#: enough (Netflix concurrency-limits' AIMD default, not TCP Reno's 0.5).
LEARNED_RATE_DECREASE: Final = 0.9

#: The documented range of a learned or seeded rate (requests a minute): below 1 a session is as
#: good as unused, above 100,000 pacing is meaningless; a configured rpm lowers the top.
RATE_MIN_RPM: Final = 1
RATE_MAX_RPM: Final = 100_000

#: The GCRA burst of a learned or seeded rate: a request may be granted up to half an interval
#: before its slot, so the wait for the next request after a slot opens is not lost for good
#: (with a burst of 1, a session paced at the limit serves noticeably less than it). Requests
#: stay at least half an interval apart.
LEARNED_BURST: Final = 1.5

#: The achieved rate is counted in two buckets of successes this wide (a sliding window): two
#: fields and one write per success, off by at most one bucket's share, which the decrease absorbs.
RATE_BUCKET_MS: Final = 5_000

#: Fewer successes than this since the last decrease say too little of the achieved rate: the
#: next decrease is then from the rate in force (one success in a short span reads as a low rate).
RATE_SAMPLE_MIN: Final = 2

#: The increase: after a quiet period (no decrease, increase or 429) of at least RATE_QUIET_MS
#: and RATE_QUIET_INTERVALS intervals at the current pace, a success of a session driven at its
#: pace raises the rate: below the rate the last 429 came at, half the way back to it (at least
#: RATE_STEP of it); above it, RATE_STEP doubled per consecutive quiet period up to
#: RATE_STEP_MAX: slow near the limit just found, fast when it has grown away (BIC and CUBIC).
RATE_QUIET_MS: Final = 1_000
RATE_QUIET_INTERVALS: Final = 2
RATE_STEP: Final = 0.03
RATE_STEP_MAX: Final = 0.25

#: A seed from the upstream's headers rewrites the rate only when it differs from the last seed by
#: more than this share: no write per request while the upstream says the same.
RATE_SEED_TOLERANCE: Final = 0.01

#: Requests under an rpm quota are spaced 2% wider than 60000/rpm ms: a grant here and the
#: request's arrival upstream are milliseconds apart, and that jitter must never tip an upstream
#: that enforces the very same rpm into a 429. Costs at most 2% of the quota.
QUOTA_SLACK: Final = 1.02

#: A unit (tpm) budget may run this far ahead of now: a full budget is one minute's worth of units.
UNIT_WINDOW_MS: Final = 60_000

#: What an rpm or a tpm is per: a request or unit takes MINUTE_MS / rpm (or tpm) ms of its schedule.
MINUTE_MS: Final = 60_000

#: How many due entries one script call processes per housekeeping pass (expired leases, ended
#: cooldowns...); the rest wait for the next call, so no single call runs long.
HOUSEKEEPING_BATCH: Final = 256

#: The longest a pool goes without a full housekeeping pass even when its ``due_at`` says nothing
#: is due: bounds the delay when a deadline was written without lowering ``due_at`` (a replica
#: still running scripts from before ``due_at``, during a rollout; an operator's redis-cli).
HOUSEKEEPING_MAX_MS: Final = 1_000

#: A waiting replica renews its ticket in the fleet-wide queue at least every FALLBACK_WAIT_S; a
#: ticket not renewed for TICKET_TTL_MS (its replica died) lapses, so it blocks nobody for long.
TICKET_TTL_MS: Final = 5_000

#: The longest a waiting head sleeps without a wake-up before asking the store again: a wake
#: missed (a dropped pub/sub connection) costs at most this.
FALLBACK_WAIT_S: Final = 1.0
#: 401/403 judgement: how long a suspicion (a refusal that may be the request's fault, not the
#: credential's) lasts, and how long a request kind's last success counts as evidence that the
#: kind works. Ten minutes: a credential revoked is found on the next request or two, and a
#: suspicion from long ago says nothing about today.
AUTH_SUSPECT_WINDOW_MS: Final = 600_000
#: A request kind's last success is written at most this often (one HSET per kind per second).
KIND_WRITE_EVERY_MS: Final = 1_000
#: Most request kinds a pool remembers: when a new one would exceed it the record starts over
#: (its worst cost: a suspicion judged without a success to compare with), so clients sending
#: many distinct paths cannot grow it without bound.
KINDS_MAX: Final = 1_000

#: Alerts: width of one bucket of the fleet's outcome tally. The error-rate window is counted in
#: whole buckets, so this is its resolution; 10 s keeps the tally at 30 fields for 5 minutes.
ALERT_BUCKET_MS: Final = 10_000

#: Alerts: fewest upstream attempts in the window before the error rate may fire, so two failures
#: out of three attempts at night do not page anyone.
ALERT_MIN_ATTEMPTS: Final = 20

#: Alerts and metrics: most sessions of one set (open breakers, disabled) read per check, so a
#: check costs a bounded amount however large the pool.
OPS_SET_LIMIT: Final = 500
