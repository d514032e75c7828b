"""Leases: idempotent release, late release, unknown ids, renewal, replayed acquire, and the
expiry of the leases of a process that died."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys

import pytest
from redis.asyncio import Redis

from broker import Lease, LeaseError, NoSessionAvailable, Outcome, Pool, Release, Released
from broker.keys import PoolKeys
from tests.broker.conftest import REAL_REDIS_ONLY, WORKER


async def acquire_when_free(pool: Pool, *, within_s: float) -> Lease:
    """Acquire, waiting as NoSessionAvailable advises, for at most ``within_s`` seconds."""
    async with asyncio.timeout(within_s):
        while True:
            try:
                return await pool.acquire()
            except NoSessionAvailable as exc:
                await asyncio.sleep(((exc.retry_after_ms or 0) + 20) / 1000)


async def test_release_twice_counts_once(make_pool, make_sessions) -> None:
    """A replayed release answers 'duplicate' and changes no counter, whatever its outcome."""
    pool = await make_pool(make_sessions(1))
    lease = await pool.acquire()
    first = await pool.release(lease, Outcome.SUCCESS, latency_ms=10)
    second = await pool.release(lease, Outcome.SUCCESS, latency_ms=10)
    third = await pool.release(lease, Outcome.SERVER, detail="503")
    assert (first.status, second.status, third.status) == ("released", "duplicate", "duplicate")
    assert first.session_id == second.session_id == "s0"
    state = await pool.session_state("s0")
    assert state["n_success"] == "1"
    assert "n_server" not in state
    assert state["in_flight"] == "0"


async def test_release_many_answers_each_in_order(make_pool, make_sessions) -> None:
    """Several releases sent together: each one's answer in its place, an unknown lease as its
    LeaseError, a replay as a duplicate; every outcome counted once."""
    pool = await make_pool(make_sessions(2))
    first, second = await pool.acquire(), await pool.acquire()
    await pool.release(second, Outcome.SUCCESS)
    unknown = Lease(pool.name, "s0", "no-such-lease", 0)
    results = await pool.release_many(
        [
            Release(first, Outcome.SERVER, latency_ms=7, detail="500"),
            Release(unknown, Outcome.SUCCESS),
            Release(second, Outcome.SUCCESS),
        ]
    )
    assert isinstance(results[0], Released)
    assert (results[0].status, results[0].session_id) == ("released", first.session_id)
    assert isinstance(results[1], LeaseError)
    assert isinstance(results[2], Released)
    assert results[2].status == "duplicate"
    states = [await pool.session_state(s) for s in ("s0", "s1")]
    assert sum(int(s.get("n_server", 0)) for s in states) == 1
    assert sum(int(s.get("n_success", 0)) for s in states) == 1
    assert all(s.get("in_flight", "0") == "0" for s in states)


async def test_late_release_counts_once(make_pool, make_sessions) -> None:
    """A release after expiry is 'late', counts once and leaves in_flight at 0, never below."""
    pool = await make_pool(make_sessions(1), lease_ttl_ms=200)
    lease = await pool.acquire()
    await asyncio.sleep(0.35)
    late = await pool.release(lease, Outcome.SUCCESS)
    again = await pool.release(lease, Outcome.SUCCESS)
    assert (late.status, again.status) == ("late", "duplicate")
    state = await pool.session_state("s0")
    assert state["n_success"] == "1"
    assert state["in_flight"] == "0"
    assert state["leases_expired"] == "1"
    assert state["state"] == "available"


async def test_late_release_keeps_the_next_holders_slot(make_pool, make_sessions) -> None:
    """A late release does not free the slot another holder got after the expiry."""
    short = await make_pool(make_sessions(1, max_concurrency=1), lease_ttl_ms=200)
    long = await make_pool()
    expired = await short.acquire()
    await asyncio.sleep(0.35)
    current = await long.acquire()
    assert current.session_id == "s0"
    assert (await short.release(expired, Outcome.SERVER)).status == "late"
    state = await long.session_state("s0")
    assert (state["in_flight"], state["state"]) == ("1", "busy")
    with pytest.raises(NoSessionAvailable) as caught:
        await long.acquire()
    assert caught.value.reason == "busy"
    assert (await long.release(current, Outcome.SUCCESS)).status == "released"
    state = await long.session_state("s0")
    assert (state["in_flight"], state["n_server"], state["n_success"]) == ("0", "1", "1")


async def test_a_due_at_far_ahead_does_not_hold_housekeeping_off(
    make_pool, make_sessions, redis: Redis, store_now_ms
) -> None:
    """A pool's due_at beyond the longest skip (stale, or written by hand) is not trusted: an
    expired lease is still reaped by the next call."""
    pool = await make_pool(make_sessions(1, max_concurrency=1), lease_ttl_ms=200)
    expired = await pool.acquire()
    pool_hash = PoolKeys(pool.name).pool
    await redis.hset(pool_hash, "due_at", await store_now_ms() + 3_600_000)
    await asyncio.sleep(0.35)
    assert (await pool.acquire()).session_id == "s0"
    assert (await pool.session_state("s0"))["leases_expired"] == "1"
    assert (await pool.release(expired, Outcome.SUCCESS)).status == "late"


async def test_unknown_lease_is_rejected_cleanly(make_pool, make_sessions, redis: Redis) -> None:
    """Release or renew of a never-granted lease id raises LeaseError and changes nothing."""
    pool = await make_pool(make_sessions(1))
    held = await pool.acquire()
    before = (await redis.dbsize(), await pool.session_state("s0"))
    stranger = Lease(pool.name, "s0", "never-granted", held.expires_at_ms)
    with pytest.raises(LeaseError, match="never-granted"):
        await pool.release(stranger, Outcome.SUCCESS)
    with pytest.raises(LeaseError, match="never-granted"):
        await pool.renew(stranger)
    assert (await redis.dbsize(), await pool.session_state("s0")) == before


async def test_lease_of_another_pool_is_unknown(make_pool, make_sessions) -> None:
    """A lease is known only to the pool that granted it."""
    first = await make_pool(make_sessions(1), name="first")
    second = await make_pool(make_sessions(1), name="second")
    lease = await first.acquire()
    with pytest.raises(LeaseError, match="unknown to pool 'second'"):
        await second.release(lease, Outcome.SUCCESS)
    assert (await first.release(lease, Outcome.SUCCESS)).status == "released"


@pytest.mark.slow
async def test_renew_extends_a_live_lease(make_pool, make_sessions) -> None:
    """A renewed lease outlives its first expiry: the session stays held, release is on time."""
    pool = await make_pool(make_sessions(1, max_concurrency=1), lease_ttl_ms=1000)
    lease = await pool.acquire()
    await asyncio.sleep(0.6)
    renewed = await pool.renew(lease)
    assert renewed.lease_id == lease.lease_id
    assert renewed.session_id == lease.session_id
    assert renewed.expires_at_ms >= lease.expires_at_ms + 500
    await asyncio.sleep(0.6)  # past the first expiry, before the renewed one
    with pytest.raises(NoSessionAvailable) as caught:
        await pool.acquire()
    assert caught.value.reason == "busy"
    assert (await pool.release(renewed, Outcome.SUCCESS)).status == "released"
    assert (await pool.session_state("s0")).get("leases_expired") is None


async def test_renew_after_release_fails(make_pool, make_sessions) -> None:
    """Renewing a released lease raises LeaseError."""
    pool = await make_pool(make_sessions(1))
    lease = await pool.acquire()
    await pool.release(lease, Outcome.SUCCESS)
    with pytest.raises(LeaseError, match="no longer live"):
        await pool.renew(lease)


async def test_renew_after_expiry_fails(make_pool, make_sessions) -> None:
    """Renewing a lease whose expiry has passed raises LeaseError: its slot may be gone."""
    pool = await make_pool(make_sessions(1), lease_ttl_ms=200)
    lease = await pool.acquire()
    await asyncio.sleep(0.35)
    with pytest.raises(LeaseError, match="no longer live"):
        await pool.renew(lease)


async def test_acquire_replay_returns_the_same_lease(make_pool, make_sessions) -> None:
    """An acquire resent with its lease id, from any replica, returns the same lease, one slot."""
    pool = await make_pool(make_sessions(3))
    other_replica = await make_pool()
    lease = await pool.acquire(lease_id="request-7-attempt-1")
    assert await pool.acquire(lease_id="request-7-attempt-1") == lease
    assert await other_replica.acquire(lease_id="request-7-attempt-1") == lease
    state = await pool.session_state(lease.session_id)
    assert (state["in_flight"], state["leases"]) == ("1", "1")


async def test_acquire_replay_after_release_is_refused(make_pool, make_sessions) -> None:
    """A lease id whose lease ended cannot be acquired again: each acquire needs a new id."""
    pool = await make_pool(make_sessions(1))
    lease = await pool.acquire(lease_id="once")
    await pool.release(lease, Outcome.SUCCESS)
    with pytest.raises(LeaseError, match="already ended"):
        await pool.acquire(lease_id="once")
    assert (await pool.session_state("s0"))["leases"] == "1"


@REAL_REDIS_ONLY
@pytest.mark.slow
async def test_leases_of_a_killed_process_expire(make_pool, make_sessions, store) -> None:
    """Leases renewed by a live process stay held; after its SIGKILL they expire and free up."""
    ttl_ms = 1000
    pool = await make_pool(make_sessions(2, max_concurrency=1), lease_ttl_ms=ttl_ms)
    holder = await asyncio.create_subprocess_exec(
        sys.executable, str(WORKER), "hold", store.url, str(ttl_ms), "2",
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        assert holder.stdout is not None
        line = await asyncio.wait_for(holder.stdout.readline(), timeout=30)
        assert sorted(json.loads(line)) == ["s0", "s1"]
        await asyncio.sleep(1.5 * ttl_ms / 1000)  # longer than a TTL: only renewal keeps them
        with pytest.raises(NoSessionAvailable) as caught:
            await pool.acquire()
        assert caught.value.reason == "busy"
        os.kill(holder.pid, signal.SIGKILL)
        assert await holder.wait() == -signal.SIGKILL
        leases = [await acquire_when_free(pool, within_s=5) for _ in range(2)]
    finally:
        if holder.returncode is None:
            holder.kill()
            await holder.wait()
    assert sorted(lease.session_id for lease in leases) == ["s0", "s1"]
    for session_id in ("s0", "s1"):
        state = await pool.session_state(session_id)
        assert (state["in_flight"], state["leases_expired"]) == ("1", "1")
