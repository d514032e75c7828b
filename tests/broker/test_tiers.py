"""Priority tiers inside a pool: acquire takes the best tier that has an eligible session, a lower
tier only while every session above it is unavailable, and the pool's strategy within a tier."""

from __future__ import annotations

from collections import Counter

import pytest

from broker import NoSessionAvailable, Outcome, Pool, PoolKeys, Session, Strategy, WaitQueue
from tests.broker.conftest import REAL_REDIS_ONLY

UPPER = {"u0", "u1"}
LOWER = {"l0", "l1", "l2"}


def tiered(**fields: object) -> list[Session]:
    """Two upper-tier sessions (priority 1) and three lower-tier ones (priority 0, the default)."""
    upper = [Session(id=i, secret=f"x-{i}", priority=1, **fields) for i in sorted(UPPER)]
    lower = [Session(id=i, secret=f"x-{i}", **fields) for i in sorted(LOWER)]
    return lower + upper  # configuration order must not matter


async def picks(pool: Pool, n: int) -> list[str]:
    """The sessions of ``n`` acquires, each released at once as a success."""
    ids = []
    for _ in range(n):
        lease = await pool.acquire()
        ids.append(lease.session_id)
        await pool.release(lease, Outcome.SUCCESS)
    return ids


@pytest.mark.parametrize("strategy", list(Strategy), ids=lambda s: s.value)
async def test_each_strategy_picks_within_the_best_tier(
    make_pool, strategy: Strategy, seeded_random: None
) -> None:
    """With every session eligible, two replicas only ever lease the upper tier, and both of its
    sessions get traffic."""
    a = await make_pool(tiered(), strategy=strategy)
    b = await make_pool(tiered(), strategy=strategy)
    ids = await picks(a, 12) + await picks(b, 12)
    assert set(ids) == UPPER


async def test_round_robin_alternates_within_a_tier(make_pool) -> None:
    """Round-robin keeps a cursor per tier: exact turns in the upper tier, then in the lower."""
    a = await make_pool(tiered(), strategy=Strategy.ROUND_ROBIN)
    b = await make_pool(tiered(), strategy=Strategy.ROUND_ROBIN)
    assert Counter(await picks(a, 3) + await picks(b, 3)) == {"u0": 3, "u1": 3}
    for session_id in UPPER:
        await a.disable(session_id)
    assert Counter(await picks(b, 6)) == {"l0": 2, "l1": 2, "l2": 2}


@pytest.mark.parametrize("strategy", list(Strategy), ids=lambda s: s.value)
async def test_lower_tier_serves_only_while_the_upper_is_disabled(
    make_pool, strategy: Strategy, seeded_random: None
) -> None:
    """Replica A disables the whole upper tier: replica B falls through to the lower tier, and
    returns to the upper tier as soon as one of its sessions is enabled again."""
    a = await make_pool(tiered(), strategy=strategy)
    b = await make_pool(tiered(), strategy=strategy)
    await a.disable("u0")
    assert set(await picks(b, 6)) == {"u1"}  # one upper session left: still no lower traffic
    await a.disable("u1")
    assert set(await picks(b, 12)) <= LOWER
    await a.enable("u1")
    assert set(await picks(b, 6)) == {"u1"}


async def test_lower_tier_serves_only_while_the_upper_is_cooling(make_pool, store_reaches) -> None:
    """Both upper sessions cooling after a 429 (reported by replica A): replica B gets the lower
    tier until the first cooldown ends, then the upper tier again."""
    a = await make_pool(tiered())
    b = await make_pool(tiered())
    deadlines = []
    for retry_after in (300, 5000):
        lease = await a.acquire()
        released = await a.release(lease, Outcome.RATE_LIMITED, retry_after_ms=retry_after)
        deadlines.append(released.cooldown_until_ms)
    assert set(await picks(b, 6)) <= LOWER
    await store_reaches(deadlines[0])
    returned = (await b.acquire()).session_id
    assert returned in UPPER
    assert set(await picks(b, 6)) == {returned}


async def test_lower_tier_serves_only_while_the_upper_is_busy(make_pool) -> None:
    """Upper sessions at their max_concurrency (leases held by replica A): replica B gets the
    lower tier; when A releases one, B gets that one again."""
    a = await make_pool(tiered(max_concurrency=1))
    b = await make_pool(tiered(max_concurrency=1))
    held = [await a.acquire(), await a.acquire()]
    assert {lease.session_id for lease in held} == UPPER
    lower = await b.acquire()
    assert lower.session_id in LOWER
    await b.release(lower, Outcome.SUCCESS)
    await a.release(held[0], Outcome.SUCCESS)
    assert (await b.acquire()).session_id == held[0].session_id


async def test_lower_tier_serves_while_the_upper_is_out_of_quota(make_pool) -> None:
    """An upper session whose rpm quota is used up is passed over for the lower tier."""
    sessions = [
        Session(id="u0", secret="x", priority=5, rpm=1),
        Session(id="l0", secret="y", priority=-5),
    ]
    pool = await make_pool(sessions)
    assert await picks(pool, 3) == ["u0", "l0", "l0"]


async def test_exclude_falls_through_the_tiers(make_pool) -> None:
    """A request that tried the whole upper tier gets the lower one; having tried everything it
    is told so."""
    pool = await make_pool(tiered())
    assert (await pool.acquire(exclude=UPPER)).session_id in LOWER
    with pytest.raises(NoSessionAvailable) as caught:
        await pool.acquire(exclude=UPPER | LOWER)
    assert caught.value.reason == "tried"
    assert caught.value.counts["available"] == 5  # no max_concurrency: a leased one stays eligible


async def test_none_eligible_counts_every_tier(make_pool) -> None:
    """Every session of every tier cooling: the refusal counts them all and says when the first
    one is back."""
    sessions = tiered()
    pool = await make_pool(sessions)
    for _ in sessions:
        lease = await pool.acquire()
        await pool.release(lease, Outcome.RATE_LIMITED, retry_after_ms=5000)
    with pytest.raises(NoSessionAvailable) as caught:
        await pool.acquire()
    assert caught.value.reason == "cooling"
    assert caught.value.counts["cooling"] == 5
    assert caught.value.retry_after_ms is not None


async def test_queue_waits_across_tiers(make_pool) -> None:
    """Upper tier cooling and lower tier busy: a waiting request is served by whichever frees up
    first, here the upper session whose cooldown ends."""
    pool = await make_pool(tiered(max_concurrency=1))
    for _ in UPPER:
        lease = await pool.acquire()
        await pool.release(lease, Outcome.RATE_LIMITED, retry_after_ms=300)
    held = [await pool.acquire() for _ in LOWER]
    assert {lease.session_id for lease in held} == LOWER
    queue = WaitQueue(pool, max_waiting=10)
    queue.start()
    try:
        lease = await queue.acquire(timeout_s=5)
    finally:
        await queue.close()
    assert lease.session_id in UPPER


async def test_a_priority_change_moves_the_session(make_pool, redis) -> None:
    """A resync with another priority moves the session to its new tier's set; one leaving the
    pool leaves its tier; the hash shows the priority."""
    pool = await make_pool(tiered())
    keys = PoolKeys(pool.name)
    assert set(await redis.zrange(keys.tier(1), 0, -1)) == UPPER
    moved = [
        Session(id=s.id, secret=s.secret, priority=2 if s.id == "l0" else s.priority)
        for s in tiered()
        if s.id != "u1"
    ]
    await pool.sync(moved)
    assert await redis.zrange(keys.tier(2), 0, -1) == ["l0"]
    assert await redis.zrange(keys.tier(1), 0, -1) == ["u0"]
    assert set(await redis.zrange(keys.tier(0), 0, -1)) == {"l1", "l2"}
    assert await redis.zrange(keys.tiers, 0, -1) == ["0", "1", "2"]
    assert (await pool.session_state("l0"))["priority"] == "2"
    assert set(await picks(pool, 4)) == {"l0"}


async def test_a_stale_tier_entry_is_never_leased(make_pool, redis) -> None:
    """A tier entry that avail lacks (as a replica on older scripts could leave during a rollout)
    is dropped at acquire instead of leasing a session that is not eligible."""
    pool = await make_pool(tiered())
    await pool.disable("u0")
    keys = PoolKeys(pool.name)
    await redis.zadd(keys.tier(9), {"u0": 1})
    await redis.zadd(keys.tiers, {"9": 9})
    assert set(await picks(pool, 4)) == {"u1"}
    assert await redis.zrange(keys.tiers, 0, -1) == ["0", "1"]


async def test_a_session_whose_stale_entry_was_dropped_rejoins_its_tier(make_pool, redis) -> None:
    """After acquire dropped a session's stale entry from its own tier (avail lost it to a
    replica on older scripts), the session's next settle puts it back in the tier and the tier
    back in the list of tiers."""
    pool = await make_pool(tiered())
    keys = PoolKeys(pool.name)
    await redis.zrem(keys.avail, *UPPER)
    assert set(await picks(pool, 3)) <= LOWER
    assert await redis.zrange(keys.tiers, 0, -1) == ["0"]
    for session_id in sorted(UPPER):
        await pool.gateway.reset_session(session_id=session_id)
    assert await redis.zrange(keys.tiers, 0, -1) == ["0", "1"]
    assert set(await redis.zrange(keys.tier(1), 0, -1)) == UPPER
    assert set(await picks(pool, 4)) <= UPPER


@REAL_REDIS_ONLY
async def test_a_lease_that_keeps_the_score_writes_no_place(make_pool, redis) -> None:
    """With the health strategy a lease changes nothing a session's score depends on: acquire
    writes the lease (one ZADD) and not the session's place in avail or its tier."""
    pool = await make_pool(tiered(), strategy=Strategy.HEALTH)
    keys = PoolKeys(pool.name)
    before = await redis.zrange(keys.avail, 0, -1, withscores=True)
    await redis.config_resetstat()
    lease = await pool.acquire()
    stats = await redis.info("commandstats")
    assert stats["cmdstat_zadd"]["calls"] == 1
    assert await redis.zscore(keys.leases, lease.lease_id) is not None
    assert await redis.zrange(keys.avail, 0, -1, withscores=True) == before
