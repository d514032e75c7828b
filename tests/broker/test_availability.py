"""Which sessions can be leased: the reasons NoSessionAvailable gives, ``exclude=``, and sync."""

from __future__ import annotations

import pytest

from broker import NoSessionAvailable, Outcome, Strategy


async def test_empty_pool(make_pool, make_sessions) -> None:
    """A pool never synced, or synced to no sessions, answers 'empty' with no retry time."""
    never_synced = await make_pool(name="never")
    with pytest.raises(NoSessionAvailable) as caught:
        await never_synced.acquire()
    assert (caught.value.reason, caught.value.retry_after_ms) == ("empty", None)
    pool = await make_pool(make_sessions(2))
    assert await pool.sync([]) == 0
    with pytest.raises(NoSessionAvailable) as caught:
        await pool.acquire()
    assert (caught.value.reason, caught.value.retry_after_ms) == ("empty", None)
    assert caught.value.counts == {
        "available": 0,
        "cooling": 0,
        "busy": 0,
        "disabled": 0,
        "open": 0,
        "quota": 0,
    }


async def test_all_disabled(make_pool, make_sessions) -> None:
    """With every session disabled in the configuration, acquire answers 'disabled'."""
    pool = await make_pool(make_sessions(2, enabled=False))
    with pytest.raises(NoSessionAvailable) as caught:
        await pool.acquire()
    assert (caught.value.reason, caught.value.retry_after_ms) == ("disabled", None)
    assert caught.value.counts == {
        "available": 0,
        "cooling": 0,
        "busy": 0,
        "disabled": 2,
        "open": 0,
        "quota": 0,
    }
    assert (await pool.session_state("s0"))["state"] == "disabled"


async def test_sync_enables_and_disables(make_pool, make_sessions) -> None:
    """A sync that flips ``enabled`` takes effect on the next acquire."""
    pool = await make_pool(make_sessions(1))
    await pool.sync(make_sessions(1, enabled=False))
    with pytest.raises(NoSessionAvailable) as caught:
        await pool.acquire()
    assert caught.value.reason == "disabled"
    await pool.sync(make_sessions(1))
    assert (await pool.acquire()).session_id == "s0"


async def test_all_busy_says_when_a_lease_expires(make_pool, make_sessions, store_now_ms) -> None:
    """All sessions at max_concurrency: 'busy', retry_after_ms = time to the earliest expiry."""
    pool = await make_pool(make_sessions(2, max_concurrency=1), lease_ttl_ms=30_000)
    first = await pool.acquire()
    await pool.acquire()
    before = await store_now_ms()
    with pytest.raises(NoSessionAvailable) as caught:
        await pool.acquire()
    after = await store_now_ms()
    error = caught.value
    assert error.reason == "busy"
    assert error.counts == {
        "available": 0,
        "cooling": 0,
        "busy": 2,
        "disabled": 0,
        "open": 0,
        "quota": 0,
    }
    assert error.retry_after_ms is not None
    assert first.expires_at_ms - after <= error.retry_after_ms <= first.expires_at_ms - before


async def test_busy_session_is_free_after_release(make_pool, make_sessions) -> None:
    """A session at its limit becomes leasable again once a lease on it is released."""
    pool = await make_pool(make_sessions(1, max_concurrency=2))
    leases = [await pool.acquire() for _ in range(2)]
    with pytest.raises(NoSessionAvailable):
        await pool.acquire()
    assert (await pool.session_state("s0"))["state"] == "busy"
    await pool.release(leases[0], Outcome.SUCCESS)
    assert (await pool.acquire()).session_id == "s0"


async def test_reason_is_what_blocks_the_most_sessions(make_pool, make_sessions) -> None:
    """One session at its concurrency limit and two cooling: 'cooling', not 'busy'; the counts
    say so, and the wait is the soonest end among them all (the lease's expiry here)."""
    pool = await make_pool(make_sessions(3, max_concurrency=1), lease_ttl_ms=30_000)
    cooled = [await pool.acquire(), await pool.acquire()]
    for lease in cooled:
        await pool.release(lease, Outcome.RATE_LIMITED, retry_after_ms=60_000)
    held = await pool.acquire()
    with pytest.raises(NoSessionAvailable) as caught:
        await pool.acquire()
    error = caught.value
    assert (error.reason, error.counts["cooling"], error.counts["busy"]) == ("cooling", 2, 1)
    assert error.retry_after_ms is not None
    assert error.retry_after_ms <= 30_000
    # Two busy, two cooling: a tie goes to the first in the documented order (cooling, busy).
    await pool.sync(make_sessions(4, max_concurrency=1))
    await pool.acquire(exclude=[held.session_id])
    with pytest.raises(NoSessionAvailable) as caught:
        await pool.acquire()
    assert (caught.value.reason, caught.value.counts["busy"]) == ("cooling", 2)
    # Three busy, two cooling: busy.
    await pool.sync(make_sessions(5, max_concurrency=1))
    await pool.acquire()
    with pytest.raises(NoSessionAvailable) as caught:
        await pool.acquire()
    assert (caught.value.reason, caught.value.counts["busy"]) == ("busy", 3)


async def test_cooling_and_disabled_says_cooling(make_pool, make_sessions) -> None:
    """Disabled sessions do not hide that another one will be back after its cooldown."""
    pool = await make_pool(make_sessions(1) + make_sessions(2, enabled=False)[1:])
    lease = await pool.acquire()
    await pool.release(lease, Outcome.RATE_LIMITED, retry_after_ms=5_000)
    with pytest.raises(NoSessionAvailable) as caught:
        await pool.acquire()
    assert caught.value.reason == "cooling"
    assert caught.value.counts == {
        "available": 0,
        "cooling": 1,
        "busy": 0,
        "disabled": 1,
        "open": 0,
        "quota": 0,
    }


async def test_every_eligible_one_tried(make_pool, make_sessions) -> None:
    """When ``exclude`` names every available session, acquire answers 'tried'."""
    pool = await make_pool(make_sessions(2))
    with pytest.raises(NoSessionAvailable) as caught:
        await pool.acquire(exclude=["s0", "s1"])
    assert caught.value.reason == "tried"
    assert caught.value.counts == {
        "available": 2,
        "cooling": 0,
        "busy": 0,
        "disabled": 0,
        "open": 0,
        "quota": 0,
    }


@pytest.mark.parametrize("strategy", list(Strategy), ids=str)
async def test_exclude_is_honoured(make_pool, make_sessions, strategy: Strategy) -> None:
    """Attempts of one request never get the same session twice, whatever the strategy."""
    sessions = make_sessions(5, weight=1)
    pool = await make_pool(sessions, strategy=strategy)
    for _ in range(5):
        tried: list[str] = ["not-a-member"]
        for _ in range(len(sessions)):
            lease = await pool.acquire(exclude=tried)
            assert lease.session_id not in tried
            tried.append(lease.session_id)
            await pool.release(lease, Outcome.SUCCESS)
        with pytest.raises(NoSessionAvailable) as caught:
            await pool.acquire(exclude=tried)
        assert caught.value.reason == "tried"


async def test_removed_session_is_not_leased_but_can_be_released(make_pool, make_sessions) -> None:
    """A session dropped by sync is never leased again, yet its held lease releases and counts."""
    pool = await make_pool(make_sessions(2), strategy=Strategy.ROUND_ROBIN)
    held = await pool.acquire(exclude=["s1"])
    assert await pool.sync(make_sessions(2)[1:]) == 1
    for _ in range(4):
        lease = await pool.acquire()
        assert lease.session_id == "s1"
        await pool.release(lease, Outcome.SUCCESS)
    with pytest.raises(NoSessionAvailable) as caught:
        await pool.acquire(exclude=["s1"])
    assert caught.value.reason == "tried"
    assert (await pool.session_state("s0"))["state"] == "removed"
    assert (await pool.release(held, Outcome.SUCCESS)).status == "released"
    state = await pool.session_state("s0")
    assert (state["in_flight"], state["n_success"], state["state"]) == ("0", "1", "removed")
    assert await pool.sync(make_sessions(2)) == 2
    assert (await pool.acquire(exclude=["s1"])).session_id == "s0"
