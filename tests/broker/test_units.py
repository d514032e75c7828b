"""Unit (token) quotas: a session's ``tpm`` budget, charged by the units releases report (and by
pre-charges at acquire, settled at release), enforced in the scripts for the whole fleet."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from broker import NoSessionAvailable, Outcome, Pool, Session, load_sessions

#: 60000 units per minute: a unit takes 1 ms of the schedule, 1.02 ms with the quota slack, so a
#: full budget holds 60000 / 1.02 = 58823 units.
TPM = 60_000
MS_PER_UNIT = 1.02
#: Just over a full budget: spending it leaves the session out of units for about 200 ms.
OVERDRAW = 59_000


async def field(pool: Pool, session_id: str, name: str) -> int:
    return int((await pool.session_state(session_id)).get(name, "0"))


async def schedule_ms(pool: Pool, session_id: str) -> float:
    """The session's unit schedule (ms, with microseconds)."""
    return float((await pool.session_state(session_id)).get("unit_tat", "0"))


async def spend(pool: Pool, units: int) -> str:
    """Lease a session and release it as a success that consumed ``units``."""
    lease = await pool.acquire()
    await pool.release(lease, Outcome.SUCCESS, units=units)
    return lease.session_id


async def test_spent_budget_is_skipped_until_it_refills(make_pool, store_reaches) -> None:
    """A session that reported its whole unit budget is out of quota for every replica, the
    refusal says when it refills, and it is leased again once it has."""
    a = await make_pool([Session(id="a", secret="x", tpm=TPM)])
    b = await make_pool([Session(id="a", secret="x", tpm=TPM)])
    assert await spend(a, 1000) == "a"
    assert (await b.acquire()).session_id == "a"  # budget left: still eligible
    await spend(a, OVERDRAW)
    assert (await a.session_state("a"))["state"] == "quota"
    with pytest.raises(NoSessionAvailable) as caught:
        await b.acquire()
    assert caught.value.reason == "quota"
    assert caught.value.counts["quota"] == 1
    assert caught.value.retry_after_ms is not None
    assert 0 < caught.value.retry_after_ms <= 60_000
    refills_at = int(await schedule_ms(a, "a")) - 60_000 + 1
    await store_reaches(refills_at)
    assert (await b.acquire()).session_id == "a"


async def test_spent_session_gives_way_to_another(make_pool) -> None:
    """With one session out of units the others carry the traffic; a session without a tpm
    counts units but is never limited by them."""
    sessions = [
        Session(id="metered", secret="x", tpm=TPM, priority=1),
        Session(id="free", secret="y"),
    ]
    pool = await make_pool(sessions)
    assert await spend(pool, OVERDRAW) == "metered"
    assert await spend(pool, OVERDRAW) == "free"
    assert await spend(pool, OVERDRAW) == "free"
    assert await field(pool, "free", "units") == 2 * OVERDRAW
    assert (await pool.session_state("free"))["state"] == "available"


async def test_replayed_release_counts_units_once(make_pool) -> None:
    """A release resent (by redis-py after a reconnect, or by another replica) is a duplicate:
    its units are not charged again."""
    a = await make_pool([Session(id="a", secret="x", tpm=TPM)])
    b = await make_pool([Session(id="a", secret="x", tpm=TPM)])
    lease = await a.acquire()
    first = await a.release(lease, Outcome.SUCCESS, units=500)
    schedule = await schedule_ms(a, "a")
    replay = await b.release(lease, Outcome.SUCCESS, units=500)
    assert (first.status, replay.status) == ("released", "duplicate")
    assert await field(a, "a", "units") == 500
    assert await schedule_ms(a, "a") == schedule


async def test_replayed_acquire_precharges_once(make_pool) -> None:
    """An acquire resent with the same lease id returns the same lease and charges nothing more."""
    pool = await make_pool([Session(id="a", secret="x", tpm=TPM)])
    first = await pool.acquire(lease_id="L1", precharge=700)
    again = await pool.acquire(lease_id="L1", precharge=700)
    assert again.lease_id == first.lease_id
    assert await field(pool, "a", "units") == 700


async def test_precharge_is_refunded_down_to_the_units_used(make_pool, store_now_ms) -> None:
    """A pre-charge larger than the usage reported is partly refunded at release."""
    pool = await make_pool([Session(id="a", secret="x", tpm=TPM)])
    lease = await pool.acquire(precharge=1000)
    assert await field(pool, "a", "units") == 1000
    charged = await schedule_ms(pool, "a")
    await pool.release(lease, Outcome.SUCCESS, units=300)
    settled = await schedule_ms(pool, "a")
    assert await field(pool, "a", "units") == 300
    refund_ms = 700 * MS_PER_UNIT
    # The refund takes 714 ms off the schedule (kept to the microsecond), never before now.
    assert charged - refund_ms - 0.001 <= settled <= max(charged - refund_ms, await store_now_ms())
    assert settled < charged


async def test_usage_above_the_precharge_is_charged_extra(make_pool) -> None:
    """Usage above the pre-charge is charged on top of it at release."""
    pool = await make_pool([Session(id="a", secret="x", tpm=TPM)])
    lease = await pool.acquire(precharge=100)
    charged = await schedule_ms(pool, "a")
    await pool.release(lease, Outcome.SUCCESS, units=500)
    assert await field(pool, "a", "units") == 500
    assert await schedule_ms(pool, "a") >= charged + 400 * MS_PER_UNIT - 0.001


async def test_unreported_usage_keeps_the_precharge(make_pool) -> None:
    """With no usage reported the estimate stands; an unused lease gets it all back."""
    pool = await make_pool([Session(id="a", secret="x", tpm=TPM)])
    await pool.release(await pool.acquire(precharge=400), Outcome.SUCCESS)
    assert await field(pool, "a", "units") == 400
    await pool.release(await pool.acquire(precharge=900), Outcome.UNUSED)
    assert await field(pool, "a", "units") == 400


async def test_a_precharge_can_spend_the_budget(make_pool) -> None:
    """An estimate that takes the whole budget keeps other replicas off the session at once,
    before any usage is reported."""
    a = await make_pool([Session(id="a", secret="x", tpm=TPM)])
    b = await make_pool([Session(id="a", secret="x", tpm=TPM)])
    lease = await a.acquire(precharge=OVERDRAW)
    with pytest.raises(NoSessionAvailable) as caught:
        await b.acquire()
    assert caught.value.reason == "quota"
    await a.release(lease, Outcome.SUCCESS, units=10)  # the estimate was far too high
    assert (await b.acquire()).session_id == "a"


async def test_negative_amounts_are_refused(make_pool) -> None:
    """Units and pre-charges are counts: a negative one is a caller's bug."""
    pool = await make_pool([Session(id="a", secret="x", tpm=TPM)])
    with pytest.raises(ValueError, match="precharge"):
        await pool.acquire(precharge=-1)
    lease = await pool.acquire()
    with pytest.raises(ValueError, match="units"):
        await pool.release(lease, Outcome.SUCCESS, units=-5)


async def test_sessions_file_carries_priority_and_tpm(make_pool, tmp_path: Path) -> None:
    """``priority`` and ``tpm`` come from the sessions file and show in the session's hash."""
    path = tmp_path / "sessions.json"
    entries = [{"id": "a", "secret": "x", "priority": 3, "tpm": 90000}, {"id": "b", "secret": "y"}]
    path.write_text(json.dumps({"sessions": entries}))
    sessions = load_sessions(secrets=None, path=path)
    assert [(s.priority, s.tpm) for s in sessions] == [(3, 90000), (0, None)]
    pool = await make_pool(sessions)
    state = await pool.session_state("a")
    assert (state["priority"], state["tpm"]) == ("3", "90000")
    assert (await pool.session_state("b"))["tpm"] == "0"
