"""Resilience decided inside the scripts: circuit breaker, auth disable, escalating cooldowns and
rpm quotas, the same for every replica at the same instant."""

from __future__ import annotations

import asyncio
import json

import pytest

from broker import NoSessionAvailable, Outcome, Pool, Session, UnknownSession
from tests.broker.conftest import REAL_REDIS_ONLY, go_all, ready_workers

FAILURES = (Outcome.SERVER, Outcome.NETWORK, Outcome.TIMEOUT)


async def fail(pool: Pool, times: int, outcome: Outcome = Outcome.SERVER) -> None:
    for _ in range(times):
        await pool.release(await pool.acquire(), outcome)


async def why_not(pool: Pool) -> NoSessionAvailable:
    with pytest.raises(NoSessionAvailable) as caught:
        await pool.acquire()
    return caught.value


async def wait_half_open(pool: Pool, session_id: str, within_s: float = 5.0) -> None:
    for _ in range(int(within_s / 0.02)):
        state = await pool.session_state(session_id)
        if int(state["breaker_until"]) <= await store_ms(pool):
            return
        await asyncio.sleep(0.02)
    pytest.fail("breaker never reached its half-open time")


async def store_ms(pool: Pool) -> int:
    seconds, micros = await pool.redis.time()
    return int(seconds) * 1000 + int(micros) // 1000


@pytest.mark.parametrize("outcome", FAILURES, ids=lambda o: o.value)
async def test_breaker_opens_after_threshold(make_pool, outcome: Outcome) -> None:
    """THRESHOLD consecutive failures open the breaker; while open the session is never leased."""
    pool = await make_pool(
        [Session(id="a", secret="x")], breaker_threshold=3, breaker_timeout_ms=60_000
    )
    await fail(pool, 2, outcome)
    assert (await pool.session_state("a")).get("breaker", "closed") == "closed"
    await fail(pool, 1, outcome)
    state = await pool.session_state("a")
    assert (state["breaker"], state["state"]) == ("open", "open")
    error = await why_not(pool)
    assert error.reason == "open"
    assert error.counts["open"] == 1
    assert error.retry_after_ms is not None
    assert 55_000 <= error.retry_after_ms <= 60_000


async def test_success_resets_the_failure_count(make_pool) -> None:
    """Failures must be consecutive: a success in between starts the count again."""
    pool = await make_pool([Session(id="a", secret="x")], breaker_threshold=3)
    await fail(pool, 2)
    await fail(pool, 1, Outcome.SUCCESS)
    await fail(pool, 2)
    assert (await pool.session_state("a"))["state"] == "available"


async def test_rate_limits_and_client_errors_do_not_trip_the_breaker(make_pool) -> None:
    """Only server, network and timeout failures count toward the breaker."""
    pool = await make_pool(
        [Session(id="a", secret="x")], breaker_threshold=2, rate_limit_cooldown_ms=0
    )
    for _ in range(4):
        lease = await pool.acquire()
        await pool.release(lease, Outcome.RATE_LIMITED, retry_after_ms=0)
    assert (await pool.session_state("a")).get("breaker", "closed") == "closed"


async def test_half_open_admits_one_probe_and_success_closes(make_pool) -> None:
    """After the timeout exactly one probe is admitted; its success closes the breaker."""
    pool = await make_pool(
        [Session(id="a", secret="x")], breaker_threshold=1, breaker_timeout_ms=300
    )
    await fail(pool, 1)
    await wait_half_open(pool, "a")
    leases = await asyncio.gather(*(pool.acquire() for _ in range(20)), return_exceptions=True)
    granted = [lease for lease in leases if not isinstance(lease, BaseException)]
    assert len(granted) == 1
    assert granted[0].probe
    assert {e.reason for e in leases if isinstance(e, NoSessionAvailable)} == {"busy"}
    await pool.release(granted[0], Outcome.SUCCESS)
    state = await pool.session_state("a")
    assert (state["breaker"], state["state"]) == ("closed", "available")
    assert not (await pool.acquire()).probe


async def test_probe_failure_reopens(make_pool, store_now_ms) -> None:
    """A failed probe opens the breaker again (for as long as the first time: the escalation
    starts with the second failed probe in a row, tests/broker/test_breaker_window.py)."""
    pool = await make_pool(
        [Session(id="a", secret="x")], breaker_threshold=1, breaker_timeout_ms=300
    )
    await fail(pool, 1)
    await wait_half_open(pool, "a")
    probe = await pool.acquire()
    assert probe.probe
    before = await store_now_ms()
    await pool.release(probe, Outcome.TIMEOUT)
    after = await store_now_ms()
    state = await pool.session_state("a")
    assert state["breaker"] == "open"
    assert state["breaker_trips"] == "2"
    # Open for 300 ms from the release, which happened between the two readings of the clock.
    assert before + 300 <= int(state["breaker_until"]) <= after + 300


async def test_breaker_timeout_is_capped(make_pool, store_now_ms) -> None:
    """Repeated trips never keep a breaker open longer than the longest timeout."""
    pool = await make_pool(
        [Session(id="a", secret="x")],
        breaker_threshold=1,
        breaker_timeout_ms=100,
        breaker_timeout_max_ms=250,
    )
    for _ in range(3):
        await fail(pool, 1)
        await wait_half_open(pool, "a")
    await fail(pool, 1)
    state = await pool.session_state("a")
    assert int(state["breaker_until"]) - await store_now_ms() <= 250


async def test_breaker_off_never_opens(make_pool) -> None:
    """With the breaker disabled (threshold 0) failures only lower health."""
    pool = await make_pool([Session(id="a", secret="x")], breaker_threshold=0)
    await fail(pool, 20)
    assert (await pool.session_state("a"))["state"] == "available"


async def test_expired_probe_frees_its_slot(make_pool) -> None:
    """A probe whose holder died (lease expired) lets another probe in."""
    pool = await make_pool(
        [Session(id="a", secret="x")],
        breaker_threshold=1,
        breaker_timeout_ms=200,
        lease_ttl_ms=300,
    )
    await fail(pool, 1)
    await wait_half_open(pool, "a")
    assert (await pool.acquire()).probe  # never released
    assert (await why_not(pool)).reason == "busy"
    await asyncio.sleep(0.4)
    assert (await pool.acquire()).probe


@REAL_REDIS_ONLY
@pytest.mark.slow
@pytest.mark.parametrize("trigger", ["consecutive", "failure-rate"])
async def test_two_processes_get_exactly_one_probe(make_pool, store, trigger: str) -> None:
    """Two broker clients in separate processes racing for a half-open session get one probe,
    whether consecutive failures or the failure-rate window opened it."""
    window = {"breaker_window": 10, "breaker_min_calls": 6, "breaker_failure_ratio": 0.5}
    pool = await make_pool(
        [Session(id="a", secret="x")],
        breaker_threshold=1 if trigger == "consecutive" else 5,
        breaker_timeout_ms=1500,
        **window,
    )
    outcomes = (
        [Outcome.SERVER] if trigger == "consecutive" else [Outcome.SUCCESS, Outcome.SERVER] * 3
    )
    for outcome in outcomes:
        await fail(pool, 1, outcome)
    assert (await pool.session_state("a"))["breaker"] == "open"
    async with ready_workers("grab", store.url, "10") as processes:
        await wait_half_open(pool, "a")
        outputs = await go_all(processes, timeout_s=30)
    grabbed = [lease for stdout in outputs for lease in json.loads(stdout)]
    assert grabbed == [["a", True]]


async def test_auth_failure_disables_until_enabled(make_pool) -> None:
    """A 401/403 the credential earned (the same request then served by another session) takes
    the session out for the whole fleet until an operator enables it."""
    pool = await make_pool([Session(id="a", secret="x"), Session(id="b", secret="y")])
    lease = await pool.acquire(exclude=["b"])
    await pool.release(lease, Outcome.AUTH, detail="401")
    await pool.release(await pool.acquire(exclude=["a"]), Outcome.SUCCESS, refused_by="a")
    other = await make_pool([Session(id="a", secret="x"), Session(id="b", secret="y")])
    for _ in range(10):
        lease = await other.acquire()
        assert lease.session_id == "b"
        await other.release(lease, Outcome.SUCCESS)
    state = await pool.session_state("a")
    assert (state["state"], state["disabled_reason"]) == ("disabled", "auth")
    assert await other.enable("a") == "available"
    assert (await other.acquire(exclude=["b"])).session_id == "a"


async def test_server_error_does_not_disable(make_pool) -> None:
    """A 503 is not the credential's fault: the session stays enabled."""
    pool = await make_pool([Session(id="a", secret="x")])
    await fail(pool, 1, Outcome.SERVER)
    assert (await pool.session_state("a"))["state"] == "available"


async def test_operator_disable_and_unknown_session(make_pool) -> None:
    """disable() takes a session out with a reason; an unknown id is a clear error."""
    pool = await make_pool([Session(id="a", secret="x")])
    assert await pool.disable("a", "maintenance") == "disabled"
    assert (await why_not(pool)).reason == "disabled"
    with pytest.raises(UnknownSession):
        await pool.disable("nope")


async def test_repeated_429s_escalate_and_success_resets(make_pool, store_now_ms) -> None:
    """Each 429 after a cooldown has ended doubles the next; a success starts over."""
    pool = await make_pool([Session(id="a", secret="x")])

    async def cooled_for(expected_ms: int) -> bool:
        """Whether a 429 now cools the session for ``expected_ms``: the deadline minus the
        release's own moment, which lies between the store's clock before and after it."""
        for _ in range(200):
            try:
                lease = await pool.acquire()
                break
            except NoSessionAvailable:
                await asyncio.sleep(0.02)
        before = await store_now_ms()
        released = await pool.release(lease, Outcome.RATE_LIMITED, retry_after_ms=100)
        after = await store_now_ms()
        return (
            released.cooldown_until_ms - after
            <= expected_ms
            <= (released.cooldown_until_ms - before)
        )

    assert [await cooled_for(ms) for ms in (100, 200, 400)] == [True, True, True]
    await asyncio.sleep(0.45)
    await pool.release(await pool.acquire(), Outcome.SUCCESS)
    assert await cooled_for(100)


async def test_concurrent_429s_of_one_cooldown_escalate_once(make_pool, store_now_ms) -> None:
    """429s from requests sent before the session began cooling do not escalate it."""
    pool = await make_pool([Session(id="a", secret="x")])
    leases = [await pool.acquire() for _ in range(4)]
    for lease in leases:
        await pool.release(lease, Outcome.RATE_LIMITED, retry_after_ms=1000)
    state = await pool.session_state("a")
    assert state["rl_streak"] == "1"
    assert int(state["cooldown_until"]) - await store_now_ms() <= 1000


async def test_escalation_is_capped(make_pool, store_now_ms) -> None:
    """An escalated cooldown never exceeds the longest cooldown."""
    pool = await make_pool([Session(id="a", secret="x")], rate_limit_cooldown_max_ms=250)
    for _ in range(4):
        for _ in range(100):
            try:
                lease = await pool.acquire()
                break
            except NoSessionAvailable:
                await asyncio.sleep(0.02)
        released = await pool.release(lease, Outcome.RATE_LIMITED, retry_after_ms=100)
        assert released.cooldown_until_ms - await store_now_ms() <= 250


async def test_exhausted_headers_cool_without_escalation(make_pool, store_now_ms) -> None:
    """A success whose headers say nothing is left cools the session until the reset."""
    pool = await make_pool([Session(id="a", secret="x")])
    released = await pool.release(await pool.acquire(), Outcome.SUCCESS, exhausted_ms=5000)
    assert 4900 <= released.cooldown_until_ms - await store_now_ms() <= 5000
    state = await pool.session_state("a")
    assert (state["state"], state.get("rl_streak")) == ("cooling", "0")
    assert "n_rate_limited" not in state


async def test_rpm_quota_spaces_requests(make_pool) -> None:
    """rpm=600 with burst 1: one lease per 102 ms (100 + 2% slack); the next waits for 'quota'."""
    pool = await make_pool([Session(id="a", secret="x", rpm=600)])
    await pool.release(await pool.acquire(), Outcome.SUCCESS)
    error = await why_not(pool)
    assert error.reason == "quota"
    assert error.retry_after_ms is not None
    assert 0 < error.retry_after_ms <= 102
    await asyncio.sleep(error.retry_after_ms / 1000 + 0.01)
    await pool.acquire()


async def test_rpm_burst(make_pool) -> None:
    """A burst of 3 admits three leases at once, then one per interval (1020 ms at 60 rpm)."""
    pool = await make_pool([Session(id="a", secret="x", rpm=60, burst=3)])
    leases = [await pool.acquire() for _ in range(3)]
    assert len({lease.lease_id for lease in leases}) == 3
    error = await why_not(pool)
    assert error.reason == "quota"
    assert 0 < (error.retry_after_ms or 0) <= 1020


async def test_a_fast_quota_keeps_its_full_rate(make_pool, store_now_ms) -> None:
    """rpm=10,000 takes 6.12 ms a slot (with the 2% slack); 100 leases in a burst move the
    schedule by 612 ms, not by 100 whole milliseconds more (no rounding up per slot)."""
    pool = await make_pool([Session(id="a", secret="x", rpm=10_000, burst=1000)])
    before = await store_now_ms()
    for _ in range(100):
        await pool.release(await pool.acquire(), Outcome.SUCCESS)
    after = await store_now_ms()
    tat = float((await pool.session_state("a"))["tat"])
    assert before + 612 <= tat <= after + 612 + 1


async def test_quota_composes_with_concurrency(make_pool) -> None:
    """A session within quota but at its concurrency limit is busy; one at quota is 'quota'."""
    pool = await make_pool([Session(id="a", secret="x", rpm=6000, burst=10, max_concurrency=1)])
    held = await pool.acquire()
    assert (await why_not(pool)).reason == "busy"
    await pool.release(held, Outcome.SUCCESS)
    await pool.acquire()


async def test_quota_moves_traffic_to_other_sessions(make_pool) -> None:
    """An out-of-quota session is skipped like a cooling one while others serve."""
    pool = await make_pool([Session(id="slow", secret="x", rpm=1), Session(id="free", secret="y")])
    picks = []
    for _ in range(10):
        lease = await pool.acquire()
        picks.append(lease.session_id)
        await pool.release(lease, Outcome.SUCCESS)
    assert picks.count("slow") == 1


async def test_precise_reset_refines_a_whole_second_retry_after(make_pool, store_now_ms) -> None:
    """A 429 saying Retry-After: 1 whose headers reset in 250 ms cools for 250 ms, not 1 s; a
    reset that contradicts Retry-After does not shorten it."""
    pool = await make_pool([Session(id="a", secret="x"), Session(id="b", secret="y")])
    lease = await pool.acquire(exclude=["b"])
    released = await pool.release(
        lease, Outcome.RATE_LIMITED, retry_after_ms=1000, exhausted_ms=250
    )
    assert released.cooldown_until_ms - await store_now_ms() <= 250
    lease = await pool.acquire(exclude=["a"])
    released = await pool.release(
        lease, Outcome.RATE_LIMITED, retry_after_ms=5000, exhausted_ms=250
    )
    assert released.cooldown_until_ms - await store_now_ms() > 4000
