"""The circuit breaker for flaky sessions: a failure-rate window beside the consecutive count, a
short first open that escalates only on repeated failed probes, and a failed attempt's rpm slot
given back. (tests/broker/test_resilience.py races two processes for the probe after either
trigger.)"""

from __future__ import annotations

import pytest

from broker import BrokerSettings, NoSessionAvailable, Outcome, Pool, Session

ONE = [Session(id="a", secret="x")]
#: A window small enough to fill in a test: 3 failures in 6 calls open it, 2 in a row do not.
WINDOW = {"breaker_window": 10, "breaker_min_calls": 6, "breaker_failure_ratio": 0.5}


async def call(pool: Pool, outcome: Outcome) -> None:
    await pool.release(await pool.acquire(), outcome)


async def breaker(pool: Pool) -> str:
    return (await pool.session_state("a")).get("breaker", "closed")


async def open_for_ms(pool: Pool, store_now_ms) -> int:
    return int((await pool.session_state("a"))["breaker_until"]) - await store_now_ms()


async def test_failure_ratio_opens_without_a_streak(make_pool) -> None:
    """Failures every other call open the breaker once the window has its minimum of calls,
    though the consecutive threshold is never reached."""
    pool = await make_pool(ONE, breaker_threshold=5, **WINDOW)
    for outcome in [Outcome.SUCCESS, Outcome.SERVER] * 2 + [Outcome.SUCCESS]:
        await call(pool, outcome)
    assert await breaker(pool) == "closed"  # 2 of 5: below the minimum of calls
    await call(pool, Outcome.NETWORK)  # 3 of 6
    state = await pool.session_state("a")
    assert (state["breaker"], state["state"]) == ("open", "open")


async def test_rate_limits_and_refusals_stay_out_of_the_window(make_pool) -> None:
    """429s and unused leases neither fill the window nor count as failures."""
    pool = await make_pool(
        [Session(id="a", secret="x"), Session(id="b", secret="y")],
        breaker_threshold=5,
        rate_limit_cooldown_ms=0,
        **WINDOW,
    )
    for outcome in (Outcome.SERVER,) + (Outcome.RATE_LIMITED, Outcome.UNUSED) * 4:
        await pool.release(await pool.acquire(exclude=["b"]), outcome)
    assert (await pool.session_state("a"))["breaker_calls"] == "1"


async def test_a_low_failure_ratio_never_opens(make_pool) -> None:
    """One failure in three keeps the breaker closed however long it goes on."""
    pool = await make_pool(ONE, breaker_threshold=5, **WINDOW)
    for _ in range(10):
        for outcome in (Outcome.SUCCESS, Outcome.SUCCESS, Outcome.TIMEOUT):
            await call(pool, outcome)
    assert await breaker(pool) == "closed"


async def test_first_open_is_short_by_default(make_pool, store_now_ms) -> None:
    """With the default settings five failures in a row open the breaker for 2 s, not 60."""
    defaults = BrokerSettings()
    assert defaults.breaker_timeout_ms == 2_000
    pool = await make_pool(ONE)
    for _ in range(defaults.breaker_threshold):
        await call(pool, Outcome.SERVER)
    assert 1_000 < await open_for_ms(pool, store_now_ms) <= 2_000


async def test_failed_probes_escalate_and_a_good_probe_ends_it(
    make_pool, store_reaches, store_now_ms
) -> None:
    """The first failed probe keeps the open time, each one after it doubles it; a probe's
    success closes the breaker, and the next trip is short again."""
    pool = await make_pool(ONE, breaker_threshold=1, breaker_timeout_ms=200)
    await call(pool, Outcome.SERVER)
    for expected_ms in (200, 400, 800):
        await store_reaches(int((await pool.session_state("a"))["breaker_until"]))
        probe = await pool.acquire()
        assert probe.probe
        await pool.release(probe, Outcome.SERVER)
        assert expected_ms - 100 < await open_for_ms(pool, store_now_ms) <= expected_ms
    await store_reaches(int((await pool.session_state("a"))["breaker_until"]))
    await call(pool, Outcome.SUCCESS)
    assert await breaker(pool) == "closed"
    await call(pool, Outcome.SERVER)
    assert 100 < await open_for_ms(pool, store_now_ms) <= 200


async def test_a_failed_attempt_gives_its_rpm_slot_back(make_pool) -> None:
    """A 5xx or a connection error gives its slot of the rpm schedule back; a timeout (which
    the upstream may have served) keeps it."""
    pool = await make_pool([Session(id="a", secret="x", rpm=1)], breaker_threshold=0)
    await call(pool, Outcome.SERVER)
    await call(pool, Outcome.NETWORK)
    await call(pool, Outcome.TIMEOUT)
    with pytest.raises(NoSessionAvailable) as caught:
        await pool.acquire()
    assert caught.value.reason == "quota"


async def test_a_learned_rate_gets_its_slot_back_too(make_pool, redis) -> None:
    """A session paced at a learned rate (no rpm configured) gets the slot of a 5xx back as well:
    the pace it is held to, not only a configured rpm, is what the failure did not use."""
    pool = await make_pool(ONE, breaker_threshold=0)
    await redis.hset(pool.keys.session("a"), mapping={"rate_rpm": 1, "rate_source": "learned"})
    await call(pool, Outcome.SERVER)
    await call(pool, Outcome.NETWORK)
    await pool.acquire()
    with pytest.raises(NoSessionAvailable) as caught:
        await pool.acquire()
    assert caught.value.reason == "quota"
