"""The learned rate (docs/learning.md): a decrease once per wave of header-less 429s, fleet-wide;
an increase after quiet; seeding from headers; a configured rpm as the cap; the clamps."""

from __future__ import annotations

import asyncio
import json

import pytest
from redis.asyncio import Redis

from broker import NoSessionAvailable, Outcome, Pool, Session
from broker.admin import PoolAdmin
from broker.constants import PROBE_COOLDOWN_MS, RATE_MAX_RPM, RATE_MIN_RPM
from proxy.ops.status import render_status, render_summary
from tests.broker.conftest import REAL_REDIS_ONLY, go_all, ready_workers


async def succeed(pool: Pool, times: int) -> None:
    for _ in range(times):
        await pool.release(await pool.acquire(), Outcome.SUCCESS, latency_ms=5)


async def rate_of(pool: Pool, session_id: str = "s0") -> tuple[float | None, str | None]:
    state = await pool.session_state(session_id)
    rate = state.get("rate_rpm")
    return (None if rate is None else float(rate)), state.get("rate_source")


async def test_header_less_429_learns_a_rate_without_a_cooldown(make_pool, make_sessions) -> None:
    """A 429 with no usable wait sets a learned rate below the achieved one; the slower pace
    spaces the next request, so the session gets no cooldown on top (not RATE_LIMIT_COOLDOWN)."""
    pool = await make_pool(make_sessions(1))
    await succeed(pool, 5)
    assert await rate_of(pool) == (None, None)
    released = await pool.release(await pool.acquire(), Outcome.RATE_LIMITED)
    assert released.cooldown_until_ms == 0
    rate, source = await rate_of(pool)
    assert source == "learned"
    assert rate is not None
    assert RATE_MIN_RPM <= rate <= 5 * 60 * 0.9 + 1
    state = await pool.session_state("s0")
    assert state["rate_decreases"] == "1"
    assert state["probe_streak"] == "0"


async def test_a_wave_of_429s_decreases_once(make_pool, make_sessions) -> None:
    """429s of leases granted before the last decrease, from several replicas, count but do not
    decrease again; a 429 of a lease granted after it does."""
    replicas = [await make_pool(make_sessions(1), rate_limit_cooldown_ms=50) for _ in range(2)]
    await succeed(replicas[0], 5)
    first, stale_success = await replicas[0].acquire(), await replicas[0].acquire()
    leases = [[await pool.acquire() for _ in range(4)] for pool in replicas]
    await replicas[0].release(first, Outcome.RATE_LIMITED)
    # A success since the decrease: what stops the stale 429s below is their grant time alone.
    await replicas[0].release(stale_success, Outcome.SUCCESS)
    await asyncio.gather(
        *(
            pool.release(lease, Outcome.RATE_LIMITED)
            for pool, held in zip(replicas, leases, strict=True)
            for lease in held
        )
    )
    state = await replicas[0].session_state("s0")
    assert state["n_rate_limited"] == "9"
    assert state["rate_decreases"] == "1"
    await asyncio.sleep(0.1)  # the probe cooldown, capped at 50 ms
    await succeed(replicas[1], 1)
    await asyncio.sleep(0.3)  # the learned pace's next slot (<= 270 rpm: 230 ms apart)
    await replicas[1].release(await replicas[1].acquire(), Outcome.RATE_LIMITED)
    assert (await replicas[0].session_state("s0"))["rate_decreases"] == "2"


@REAL_REDIS_ONLY
async def test_a_wave_from_two_processes_decreases_once(make_pool, make_sessions, store) -> None:
    """Two OS processes releasing 429s of leases granted before the session's decrease do not
    lower its rate again."""
    pool = await make_pool(make_sessions(1))
    await succeed(pool, 5)
    first, stale_success = await pool.acquire(), await pool.acquire()

    async def decrease() -> None:
        # Every worker lease was granted before this decrease; a success follows it, so only
        # their grant time keeps them from decreasing again.
        await pool.release(first, Outcome.RATE_LIMITED)
        await pool.release(stale_success, Outcome.SUCCESS)

    async with ready_workers("wave", store.url, "5") as processes:
        await decrease()
        outputs = await go_all(processes, timeout_s=60)
    assert [json.loads(stdout) for stdout in outputs] == [["released"] * 5] * 2
    state = await pool.session_state("s0")
    assert state["n_rate_limited"] == "11"
    assert state["rate_decreases"] == "1"
    assert state["rate_source"] == "learned"


async def test_429s_in_a_hole_escalate_the_probe_without_decreasing(
    make_pool, make_sessions, store_now_ms
) -> None:
    """Fresh 429s with no success since the last decrease (an exhausted window) cool the session
    for the probe cooldown, doubling per 429, and leave the rate alone."""
    pool = await make_pool(make_sessions(1))
    await succeed(pool, 3)
    await pool.release(await pool.acquire(), Outcome.RATE_LIMITED)
    learned = await rate_of(pool)
    for streak in (1, 2):
        await asyncio.sleep(0.5 if streak == 1 else PROBE_COOLDOWN_MS / 1000 + 0.05)
        lease = await pool.acquire()
        before = await store_now_ms()
        released = await pool.release(lease, Outcome.RATE_LIMITED)
        assert released.cooldown_until_ms >= before + streak * PROBE_COOLDOWN_MS
        assert released.cooldown_until_ms <= before + streak * PROBE_COOLDOWN_MS + 100
        state = await pool.session_state("s0")
        assert state["probe_streak"] == str(streak)
    assert await rate_of(pool) == learned
    assert state["rate_decreases"] == "1"


async def test_a_429_with_a_stated_wait_does_not_decrease(make_pool, make_sessions) -> None:
    """A 429 whose Retry-After is usable cools the session to it and learns no rate."""
    pool = await make_pool(make_sessions(1))
    await succeed(pool, 3)
    await pool.release(await pool.acquire(), Outcome.RATE_LIMITED, retry_after_ms=5_000)
    assert await rate_of(pool) == (None, None)


async def paced(pool: Pool, redis: Redis, rate: float, *, quiet_for_ms: int) -> None:
    """Give s0 a learned ``rate`` whose last decrease was ``quiet_for_ms`` ago and whose
    schedule is due now (the next acquire is taken at its pace)."""
    now = await pool.redis.time()
    now_ms = int(now[0]) * 1000 + int(now[1]) // 1000
    await redis.hset(
        pool.keys.session("s0"),
        mapping={
            "rate_rpm": rate,
            "rate_source": "learned",
            "rate_decreased_at": now_ms - quiet_for_ms,
            "tat": now_ms - 1,
        },
    )


async def test_quiet_at_the_pace_raises_the_rate(make_pool, make_sessions, redis: Redis) -> None:
    """After a quiet period in which demand drove the session at its pace, a success raises the
    rate by a small step; the next success, with no new quiet period, does not."""
    pool = await make_pool(make_sessions(1))
    await paced(pool, redis, 600, quiet_for_ms=60_000)
    await pool.release(await pool.acquire(), Outcome.SUCCESS)
    rate, source = await rate_of(pool)
    assert rate is not None
    assert 600 < rate <= 600 * 1.25
    assert source == "learned"
    with pytest.raises(NoSessionAvailable):
        await pool.acquire()  # paced: the next slot is an interval away
    await asyncio.sleep(0.15)
    await pool.release(await pool.acquire(), Outcome.SUCCESS)
    assert await rate_of(pool) == (rate, source)


async def test_an_unused_pace_is_not_raised(make_pool, make_sessions, redis: Redis) -> None:
    """A session whose requests come slower than its pace keeps its rate however long it is
    quiet."""
    pool = await make_pool(make_sessions(1))
    await paced(pool, redis, 600, quiet_for_ms=60_000)
    await redis.hset(pool.keys.session("s0"), "tat", 1)  # its last slot long past
    await pool.release(await pool.acquire(), Outcome.SUCCESS)
    assert await rate_of(pool) == (600.0, "learned")


async def test_a_configured_rpm_caps_the_learned_rate(
    make_pool, make_sessions, redis: Redis
) -> None:
    """With rpm configured the rate starts at it, a seed above it is cut to it, and an increase
    stops at it (the source becomes configured again)."""
    pool = await make_pool(make_sessions(1, rpm=60))
    assert await rate_of(pool) == (60.0, "configured")
    await pool.release(await pool.acquire(), Outcome.SUCCESS, seed_rpm=1_000)
    assert await rate_of(pool) == (60.0, "configured")
    fresh = await make_pool(make_sessions(1, rpm=60), name="fresh")  # its schedule not begun
    await paced(fresh, redis, 59.5, quiet_for_ms=600_000)
    await fresh.release(await fresh.acquire(), Outcome.SUCCESS)
    assert await rate_of(fresh) == (60.0, "configured")


async def test_headers_seed_the_rate(make_pool, make_sessions) -> None:
    """A rate the headers state sets the session's rate before any 429, again when it changes,
    and not below a configured rpm's cap."""
    pool = await make_pool(make_sessions(1))
    await pool.release(await pool.acquire(), Outcome.SUCCESS, seed_rpm=300)
    assert await rate_of(pool) == (300.0, "header")
    await pool.release(await pool.acquire(), Outcome.SUCCESS, seed_rpm=600)
    assert await rate_of(pool) == (600.0, "header")
    capped = await make_pool(make_sessions(1, rpm=100), name="capped")
    await capped.release(await capped.acquire(), Outcome.SUCCESS, seed_rpm=50)
    assert await rate_of(capped) == (50.0, "header")


async def test_rates_are_clamped(make_pool, make_sessions, redis: Redis, store_now_ms) -> None:
    """A seed beyond the documented range is cut to it; a decrease never goes below its floor."""
    pool = await make_pool(make_sessions(1), rate_limit_cooldown_ms=10)
    await pool.release(await pool.acquire(), Outcome.SUCCESS, seed_rpm=1e12)
    assert await rate_of(pool) == (float(RATE_MAX_RPM), "header")
    await pool.release(await pool.acquire(), Outcome.SUCCESS, seed_rpm=1e-9)
    assert await rate_of(pool) == (float(RATE_MIN_RPM), "header")
    # One success in the last minute, at a pace just above the floor: 0.9 of it is below.
    now_ms = await store_now_ms()
    await redis.hset(
        pool.keys.session("s0"),
        mapping={"rate_rpm": 1.05, "rate_ok_n": 1, "rate_ok_from": now_ms - 60_000, "tat": 0},
    )
    await pool.release(await pool.acquire(), Outcome.RATE_LIMITED)
    assert await rate_of(pool) == (float(RATE_MIN_RPM), "learned")


async def test_learning_off_keeps_the_flat_cooldown(make_pool, make_sessions, store_now_ms) -> None:
    """RATE_LIMIT_LEARNING=false: a header-less 429 cools for RATE_LIMIT_COOLDOWN, no rate is
    learned or seeded, and a sync drops the rates learned before."""
    learning = await make_pool(make_sessions(1), rate_limit_cooldown_ms=10)
    await succeed(learning, 4)
    await learning.release(await learning.acquire(), Outcome.RATE_LIMITED)
    assert (await rate_of(learning))[1] == "learned"
    flat = await make_pool(make_sessions(1), rate_limit_cooldown_ms=7_000, rate_learning=False)
    assert await rate_of(flat) == (None, None)
    await asyncio.sleep(0.05)  # the probe cooldown, capped at 10 ms
    lease = await flat.acquire()
    before = await store_now_ms()
    released = await flat.release(lease, Outcome.RATE_LIMITED, seed_rpm=300)
    assert released.cooldown_until_ms >= before + 7_000
    assert await rate_of(flat) == (None, None)


async def test_operators_see_each_rate_and_its_source(make_pool, make_sessions) -> None:
    """The admin view shows a session's rate and where it came from; the census and the status
    summary count the pool's sessions by rate source."""
    pool = await make_pool([*make_sessions(2), Session(id="c", secret="x", rpm=30)])
    await pool.release(await pool.acquire(exclude=["s1", "c"]), Outcome.SUCCESS, seed_rpm=90)
    admin = PoolAdmin(pool)
    views = {v.id: v for v in await admin.sessions()}
    assert (views["s0"].rate_rpm, views["s0"].rate_source) == (90.0, "header")
    assert (views["s1"].rate_rpm, views["s1"].rate_source) == (None, None)
    assert (views["c"].rate_rpm, views["c"].rate_source) == (30.0, "configured")
    summary = await admin.summary()
    assert summary.rate_sources == {"configured": 1, "header": 1, "none": 1}
    assert "rates: 1 configured, 1 header, 1 none" in render_summary(summary)
    table = render_status(summary, list(views.values()))
    assert "90/min header" in table
    assert "RATE" in table.splitlines()[-4]
