"""Cooldowns after a rate limit: absolute deadlines in store time that only move later."""

from __future__ import annotations

import asyncio

import pytest

from broker import NoSessionAvailable, Outcome, Strategy
from broker.admin import PoolAdmin


@pytest.mark.slow
async def test_cooling_session_is_skipped_until_its_deadline(
    make_pool, make_sessions, store_now_ms
) -> None:
    """A session cooling for 2 s is not chosen before its deadline and is chosen after it."""
    pool = await make_pool(make_sessions(2), strategy=Strategy.ROUND_ROBIN)
    lease = await pool.acquire(exclude=["s1"])
    released = await pool.release(lease, Outcome.RATE_LIMITED, retry_after_ms=2000, detail="429")
    deadline = released.cooldown_until_ms
    picks = []
    while await store_now_ms() < deadline - 200:
        other = await pool.acquire()
        picks.append(other.session_id)
        await pool.release(other, Outcome.SUCCESS)
        with pytest.raises(NoSessionAvailable):
            await pool.acquire(exclude=["s1"])
        await asyncio.sleep(0.05)
    assert len(picks) >= 5
    assert set(picks) == {"s1"}
    await asyncio.sleep((deadline - await store_now_ms() + 50) / 1000)
    again = await pool.acquire(exclude=["s1"])
    assert again.session_id == "s0"
    await pool.release(again, Outcome.SUCCESS)
    after = [await pool.acquire() for _ in range(4)]
    assert sorted(lease.session_id for lease in after) == ["s0", "s0", "s1", "s1"]


async def test_all_cooling_says_when(make_pool, make_sessions, store_now_ms) -> None:
    """With every session cooling, acquire says 'cooling' and the time left to the deadline."""
    pool = await make_pool(make_sessions(1))
    lease = await pool.acquire()
    released = await pool.release(lease, Outcome.RATE_LIMITED, retry_after_ms=5000)
    before = await store_now_ms()
    with pytest.raises(NoSessionAvailable) as caught:
        await pool.acquire()
    after = await store_now_ms()
    error = caught.value
    assert error.reason == "cooling"
    assert error.retry_after_ms is not None
    assert released.cooldown_until_ms - after <= error.retry_after_ms
    assert error.retry_after_ms <= released.cooldown_until_ms - before
    assert error.counts == {
        "available": 0,
        "cooling": 1,
        "busy": 0,
        "disabled": 0,
        "open": 0,
        "quota": 0,
    }


async def test_cooldown_only_moves_later(make_pool, make_sessions) -> None:
    """A short second Retry-After never cuts a longer cooldown short; a longer one extends it."""
    pool = await make_pool(make_sessions(1))
    first, second, third = [await pool.acquire() for _ in range(3)]
    long = await pool.release(first, Outcome.RATE_LIMITED, retry_after_ms=10_000)
    short = await pool.release(second, Outcome.RATE_LIMITED, retry_after_ms=1_000)
    assert short.cooldown_until_ms == long.cooldown_until_ms
    state = await pool.session_state("s0")
    assert state["cooldown_until"] == str(long.cooldown_until_ms)
    with pytest.raises(NoSessionAvailable) as caught:
        await pool.acquire()
    assert caught.value.reason == "cooling"
    assert caught.value.retry_after_ms is not None
    assert caught.value.retry_after_ms > 5_000
    longer = await pool.release(third, Outcome.RATE_LIMITED, retry_after_ms=20_000)
    assert longer.cooldown_until_ms >= long.cooldown_until_ms + 9_000
    assert (await pool.session_state("s0"))["cooldowns"] == "3"


async def test_rate_limit_without_retry_after_uses_default(
    make_pool, make_sessions, store_now_ms
) -> None:
    """With rate learning off, a 429 without a usable Retry-After cools the session for the
    configured default."""
    pool = await make_pool(make_sessions(1), rate_limit_cooldown_ms=7_000, rate_learning=False)
    lease = await pool.acquire()
    before = await store_now_ms()
    released = await pool.release(lease, Outcome.RATE_LIMITED)
    after = await store_now_ms()
    assert before + 7_000 <= released.cooldown_until_ms <= after + 7_000


async def test_absurd_retry_after_is_clamped(make_pool, make_sessions, store_now_ms) -> None:
    """A Retry-After beyond the configured maximum cools the session only for the maximum."""
    pool = await make_pool(make_sessions(1), rate_limit_cooldown_max_ms=5_000)
    lease = await pool.acquire()
    before = await store_now_ms()
    released = await pool.release(lease, Outcome.RATE_LIMITED, retry_after_ms=86_400_000)
    after = await store_now_ms()
    assert before + 5_000 <= released.cooldown_until_ms <= after + 5_000


async def test_only_rate_limits_cool_down(make_pool, make_sessions) -> None:
    """Outcomes other than rate_limited report no cooldown and leave the session available."""
    pool = await make_pool(make_sessions(1))
    for outcome in (Outcome.SUCCESS, Outcome.SERVER, Outcome.NETWORK, Outcome.TIMEOUT):
        lease = await pool.acquire()
        released = await pool.release(lease, outcome)
        assert released.cooldown_until_ms == 0
    state = await pool.session_state("s0")
    assert state["state"] == "available"
    assert "cooldown_until" not in state


async def test_a_wave_of_429s_starts_one_cooldown(make_pool, make_sessions) -> None:
    """Eight leases of one session, held by two replicas, all released rate_limited at once:
    exactly one release says it started the cooldown; after a reset, the next 429 starts one."""
    first = await make_pool(make_sessions(1))
    second = await make_pool(name=first.name)
    leases = [await first.acquire() for _ in range(8)]
    released = await asyncio.gather(
        *(
            (first, second)[i % 2].release(lease, Outcome.RATE_LIMITED, retry_after_ms=30_000)
            for i, lease in enumerate(leases)
        )
    )
    assert sum(r.cooldown_started for r in released) == 1
    assert all(r.cooldown_until_ms > 0 for r in released)
    await PoolAdmin(first).reset("s0")
    lease = await second.acquire()
    again = await second.release(lease, Outcome.RATE_LIMITED, retry_after_ms=30_000)
    assert again.cooldown_started
