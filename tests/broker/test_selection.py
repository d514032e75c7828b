"""Selection strategies (see broker/selection.py): which eligible session an acquire picks.

The statistical tests seed the ``random`` module Pool.acquire draws its seeds from, so a run is
reproducible; their tolerance is 4 binomial standard deviations per session, which a correct
implementation misses with probability below 1e-4 per session.
"""

from __future__ import annotations

import asyncio
import math
from collections import Counter

import pytest

from broker import Outcome, Session, Strategy

PICKS = 1000


def within_four_sigma(count: int, total: int, probability: float) -> bool:
    sigma = math.sqrt(total * probability * (1 - probability))
    return abs(count - total * probability) <= 4 * sigma


async def test_round_robin_is_exact_across_replicas(make_pool) -> None:
    """Round-robin in config order gives each of N exactly k of k*N picks, across replicas."""
    ids = ["charlie", "alpha", "echo", "bravo", "delta"]
    sessions = [Session(id=i, secret=f"x-{i}", weight=n + 1) for n, i in enumerate(ids)]
    first = await make_pool(sessions, strategy=Strategy.ROUND_ROBIN)
    second = await make_pool()
    rounds = 7
    picks = []
    for turn in range(rounds * len(ids)):
        pool = (first, second)[turn % 2]
        lease = await pool.acquire()
        picks.append(lease.session_id)
        await pool.release(lease, Outcome.SUCCESS)
    assert picks == ids * rounds
    assert Counter(picks) == {i: rounds for i in ids}


async def test_round_robin_skips_ineligible_sessions(make_pool, make_sessions) -> None:
    """Round-robin passes over a cooling session and keeps the order of the others."""
    pool = await make_pool(make_sessions(3), strategy=Strategy.ROUND_ROBIN)
    lease = await pool.acquire()
    assert lease.session_id == "s0"
    await pool.release(lease, Outcome.RATE_LIMITED, retry_after_ms=60_000)
    picks = []
    for _ in range(6):
        lease = await pool.acquire()
        picks.append(lease.session_id)
        await pool.release(lease, Outcome.SUCCESS)
    assert picks == ["s1", "s2"] * 3


@pytest.mark.slow
async def test_random_is_uniform(make_pool, seeded_random) -> None:
    """Random picks each of 4 sessions 1/4 of the time (within 4 binomial sd), ignoring weight."""
    sessions = [Session(id=f"s{n}", secret=f"x{n}", weight=n + 1) for n in range(4)]
    pool = await make_pool(sessions, strategy=Strategy.RANDOM)
    counts = Counter([(await pool.acquire()).session_id for _ in range(PICKS)])
    assert set(counts) == {s.id for s in sessions}
    for session in sessions:
        assert within_four_sigma(counts[session.id], PICKS, 1 / len(sessions)), counts


@pytest.mark.slow
async def test_health_follows_weights(make_pool, seeded_random) -> None:
    """Health picks sessions weighted 1:2:3:4 in that proportion, within 4 binomial sd."""
    sessions = [Session(id=f"s{n}", secret=f"x{n}", weight=n + 1) for n in range(4)]
    pool = await make_pool(sessions, strategy=Strategy.HEALTH)
    counts = Counter([(await pool.acquire()).session_id for _ in range(PICKS)])
    total_weight = sum(s.weight for s in sessions)
    for session in sessions:
        expected = session.weight / total_weight
        assert within_four_sigma(counts[session.id], PICKS, expected), counts


@pytest.mark.slow
async def test_unhealthy_session_is_picked_less_but_not_never(
    make_pool, make_sessions, seeded_random
) -> None:
    """A session at the health floor gets 0.05/1.05 of picks (4 binomial sd): less, not never."""
    # No breaker: this is about health alone, and repeated failures would open it.
    pool = await make_pool(make_sessions(2), strategy=Strategy.HEALTH, breaker_threshold=0)
    for _ in range(40):
        lease = await pool.acquire(exclude=["s1"])
        await pool.release(lease, Outcome.SERVER, detail="503")
    assert (await pool.session_state("s0"))["health"] == "0.0500"
    assert (await pool.session_state("s1"))["health"] == "1.0000"
    counts = Counter([(await pool.acquire()).session_id for _ in range(PICKS)])
    assert counts["s0"] > 0
    assert within_four_sigma(counts["s0"], PICKS, 0.05 / 1.05), counts


async def test_health_recovers_with_successes(make_pool, make_sessions) -> None:
    """Server errors lower a session's health and later successes raise it again."""
    pool = await make_pool(make_sessions(1), breaker_threshold=0)

    async def health_after(outcome: Outcome, times: int) -> float:
        for _ in range(times):
            lease = await pool.acquire()
            await pool.release(lease, outcome, latency_ms=100)
        return float((await pool.session_state("s0"))["health"])

    low = await health_after(Outcome.SERVER, 10)
    high = await health_after(Outcome.SUCCESS, 10)
    assert low < 0.4
    assert high > low + 0.3


async def test_slow_session_loses_health(make_pool, make_sessions) -> None:
    """Successes far slower than the latency target halve a session's health, not more."""
    pool = await make_pool(make_sessions(1), breaker_threshold=0)
    for _ in range(5):
        lease = await pool.acquire()
        await pool.release(lease, Outcome.SUCCESS, latency_ms=10_000)
    state = await pool.session_state("s0")
    assert (state["health"], state["latency_ms"]) == ("0.5000", "10000")


async def test_rate_limits_do_not_touch_health(make_pool, make_sessions) -> None:
    """A 429 cools a session down but leaves its health as it was."""
    pool = await make_pool(make_sessions(1), breaker_threshold=0)
    lease = await pool.acquire()
    await pool.release(lease, Outcome.RATE_LIMITED, retry_after_ms=1)
    assert (await pool.session_state("s0"))["health"] == "1.0000"


async def test_lru_picks_least_recently_used(make_pool, make_sessions) -> None:
    """LRU picks the session used longest ago (here against the order of the ids)."""
    pool = await make_pool(make_sessions(3), strategy=Strategy.LRU)
    for newest_last in ("s2", "s1", "s0"):
        others = [s for s in ("s0", "s1", "s2") if s != newest_last]
        lease = await pool.acquire(exclude=others)
        await pool.release(lease, Outcome.SUCCESS)
        await asyncio.sleep(0.005)  # distinct millisecond timestamps for last_used
    picks = []
    for _ in range(6):
        lease = await pool.acquire()
        picks.append(lease.session_id)
        await pool.release(lease, Outcome.SUCCESS)
        await asyncio.sleep(0.005)
    assert picks == ["s2", "s1", "s0"] * 2


async def test_least_busy_prefers_fewest_leases(make_pool, make_sessions) -> None:
    """Least-busy picks the session with fewest live leases, least recently used among equals."""
    pool = await make_pool(make_sessions(3), strategy=Strategy.LEAST_BUSY)
    leases = {}
    for _ in range(3):
        lease = await pool.acquire()
        leases[lease.session_id] = lease
        await asyncio.sleep(0.005)
    assert sorted(leases) == ["s0", "s1", "s2"]
    await pool.release(leases["s2"], Outcome.SUCCESS)  # the most recent, now the least busy
    assert (await pool.acquire()).session_id == "s2"
    await asyncio.sleep(0.005)
    assert (await pool.acquire()).session_id == "s0"  # all hold 1 or more: s0 used longest ago
    await asyncio.sleep(0.005)
    assert (await pool.acquire()).session_id == "s1"
