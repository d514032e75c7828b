"""Operating a pool: operator actions as scripts, the census, fleet alerts decided once, the
health-summary turn, and export/import of health state."""

from __future__ import annotations

import asyncio
import math

import msgspec
import pytest
from structlog.testing import capture_logs

from broker import NoSessionAvailable, Outcome, Pool, Session, Strategy, UnknownSession
from broker.admin import PoolAdmin, UnitTotals
from broker.alerts import AlertRules, check_alerts
from broker.events import Transition, emit
from broker.snapshot import SnapshotError, export_state, import_state, parse_snapshot

THREE = [Session(id=n, secret=f"secret-{n}") for n in "abc"]
RULES = AlertRules(error_rate=0.5, window_ms=60_000, min_attempts=4)


async def test_disable_and_enable_hold_for_every_replica(make_pool) -> None:
    """A disable through one replica's admin takes the session out of the other's next acquire."""
    one, two = await make_pool(THREE[:2]), await make_pool(THREE[:2])
    view = await PoolAdmin(one).disable("a", "rotating the key")
    assert (view.state, view.disabled_reason) == ("disabled", "rotating the key")
    assert {(await two.acquire()).session_id for _ in range(2)} == {"b"}
    assert (await PoolAdmin(two).enable("a")).state == "available"
    assert (await two.acquire(exclude=["b"])).session_id == "a"


async def test_drain_shows_draining_until_the_last_lease_ends(make_pool) -> None:
    """Drain: no new lease at once; the lease already out still releases normally."""
    pool = await make_pool(THREE[:1])
    admin = PoolAdmin(pool)
    lease = await pool.acquire()
    assert (await admin.drain("a")).state == "draining"
    with pytest.raises(NoSessionAvailable):
        await pool.acquire()
    assert (await pool.release(lease, Outcome.SUCCESS)).status == "released"
    view = await admin.session("a")
    assert (view.state, view.in_flight, view.outcomes["success"]) == ("drained", 0, 1)


async def test_operator_actions_are_logged_as_what_they_are(make_pool) -> None:
    """A drain, a disable and an enable are logged as an operator's (info), not as the
    'session disabled' warning that a credential refused by the upstream earns."""
    admin = PoolAdmin(await make_pool(THREE[:2]))
    with capture_logs() as logs:
        await admin.drain("a")
        await admin.disable("b", "rotating")
        await admin.enable("a")
        emit([Transition("default", "b", "state", "available", "disabled")])  # not an operator's
    told = [(entry["event"], entry["log_level"], entry.get("session")) for entry in logs]
    assert told == [
        ("session drained by an operator", "info", "a"),
        ("session disabled by an operator", "info", "b"),
        ("session enabled by an operator", "info", "a"),
        ("session disabled", "warning", "b"),
    ]


async def test_reserved_disable_reasons_are_refused(make_pool) -> None:
    """'auth' and 'drain' mean something else; an operator's disable cannot borrow them."""
    admin = PoolAdmin(await make_pool(THREE[:1]))
    for reason in ("auth", "drain", ""):
        with pytest.raises(ValueError, match="reserved"):
            await admin.disable("a", reason)


async def test_reset_clears_cooldown_breaker_and_counters(make_pool) -> None:
    """After a reset the session is available at once with clean counters; a disable stays."""
    pool = await make_pool(THREE[:2], breaker_threshold=1)
    admin = PoolAdmin(pool)
    await pool.release(await pool.acquire(exclude=["b"]), Outcome.SERVER, detail="502")
    await pool.release(await pool.acquire(), Outcome.RATE_LIMITED, retry_after_ms=60_000)
    assert (await admin.session("a")).breaker == "open"
    assert (await admin.session("b")).state == "cooling"
    for session_id in ("a", "b"):
        view = await admin.reset(session_id)
        assert (view.state, view.breaker, view.cooldown_until_ms) == ("available", "closed", 0)
        assert sum(view.outcomes.values()) == 0
        assert view.last_error is None
    assert (await admin.census()).breakers == {}


async def test_weight_override_rescores_and_survives_a_sync(make_pool, redis) -> None:
    """A weight set by an operator rescores the session in avail at once and outlives syncs."""
    pool = await make_pool(THREE[:2], strategy=Strategy.HEALTH)
    admin = PoolAdmin(pool)
    assert (await admin.set_weight("a", 7.5)).weight_override == 7.5
    assert await redis.zscore(pool.keys.avail, "a") == 7.5
    await pool.sync(THREE[:2])
    assert await redis.zscore(pool.keys.avail, "a") == 7.5
    view = await admin.set_weight("a", None)
    assert (view.weight_override, view.weight) == (None, 1.0)
    assert await redis.zscore(pool.keys.avail, "a") == 1.0
    with pytest.raises(ValueError, match="weight"):
        await admin.set_weight("a", 0)


async def test_unknown_session_is_an_error(make_pool) -> None:
    """Every action on an id the pool does not have raises UnknownSession."""
    admin = PoolAdmin(await make_pool(THREE[:1]))
    with pytest.raises(UnknownSession):
        await admin.session("nope")
    for action in (admin.enable, admin.drain, admin.reset):
        with pytest.raises(UnknownSession):
            await action("nope")


async def test_census_counts_states_and_lists_breakers(make_pool) -> None:
    """The census counts sessions by state and names those whose breaker is not closed."""
    pool = await make_pool(THREE, breaker_threshold=1, breaker_timeout_ms=50)
    admin = PoolAdmin(pool)
    await pool.release(await pool.acquire(exclude=["b", "c"]), Outcome.SERVER)
    await admin.disable("c")
    census = await admin.census()
    assert census.breakers == {"a": "open"}
    assert census.sessions | {"total": 3} == {
        "total": 3, "available": 1, "cooling": 0, "open": 1, "half_open": 0, "quota": 0,
        "disabled": 1, "busy": 0,
    }  # fmt: skip
    await asyncio.sleep(0.1)
    await pool.acquire(exclude=["a"])  # housekeeping half-opens a's breaker
    census = await admin.census()
    assert census.breakers == {"a": "half_open"}
    assert census.leases == 1


async def test_breaker_alert_fires_once_and_resolves_once(make_pool) -> None:
    """Two replicas checking: a breaker trip is one 'firing' change, its closing one 'resolved';
    a failed probe that reopens it is the same occurrence."""
    one = await make_pool(THREE[:2], breaker_threshold=1, breaker_timeout_ms=50)
    two = await make_pool(THREE[:2], breaker_threshold=1, breaker_timeout_ms=50)
    await one.release(await one.acquire(exclude=["b"]), Outcome.SERVER)

    async def changes() -> list[tuple[str, str]]:
        found = []
        for pool in (one, two, one):
            found += [
                (c.name, c.status) for c in await check_alerts(pool, RULES, attempts=0, errors=0)
            ]
        return found

    assert await changes() == [("breaker:a", "firing")]
    await asyncio.sleep(0.1)
    probe = await two.acquire(exclude=["b"])
    assert probe.probe
    await two.release(probe, Outcome.SERVER)  # the probe fails: open again, same alert
    assert await changes() == []
    await asyncio.sleep(0.25)
    await one.release(await one.acquire(exclude=["b"]), Outcome.SUCCESS)
    assert await changes() == [("breaker:a", "resolved")]


async def test_auth_rate_limit_and_error_rate_alerts(make_pool) -> None:
    """Auth-disabled sessions, every session rate limited, and the fleet error rate fire once
    each and resolve when they clear."""
    pool = await make_pool(THREE[:2])
    admin = PoolAdmin(pool)
    # a's 401 on a request that b then served: a's credential is at fault.
    await pool.release(await pool.acquire(exclude=["b"]), Outcome.AUTH, detail="401")
    await pool.release(await pool.acquire(exclude=["a"]), Outcome.SUCCESS, refused_by="a")
    changes = await check_alerts(pool, RULES, attempts=0, errors=0)
    assert [(c.name, c.status, c.session_id) for c in changes] == [("auth:a", "firing", "a")]
    await pool.release(await pool.acquire(), Outcome.RATE_LIMITED, retry_after_ms=60_000)
    changes = await check_alerts(pool, RULES, attempts=3, errors=2)
    assert [(c.name, c.status) for c in changes] == [("all_rate_limited", "firing")]
    changes = await check_alerts(pool, RULES, attempts=2, errors=2)  # 4 of 5 in the window
    assert [(c.name, c.status) for c in changes] == [("error_rate", "firing")]
    assert "4 of 5" in changes[0].detail
    await admin.enable("a")
    await admin.reset("b")
    changes = await check_alerts(pool, RULES, attempts=20, errors=0)
    assert sorted((c.name, c.status) for c in changes) == [
        ("all_rate_limited", "resolved"),
        ("auth:a", "resolved"),
        ("error_rate", "resolved"),
    ]
    assert (await admin.summary()).alerts == {}


async def test_summary_turn_goes_to_one_replica_at_a_time(make_pool) -> None:
    """Whoever asks first after the interval gets the turn; the others do not, until the next
    interval, or until enough requests were reported."""
    admins = [PoolAdmin(await make_pool(THREE[:1])) for _ in range(3)]

    async def turns(requests: int = 0) -> list[bool]:
        return [
            (await a.summary_turn(requests, interval_ms=200, every_requests=100, min_gap_ms=0))[0]
            for a in admins
        ]

    assert await turns() == [False, False, False]  # the first call starts the clock
    await asyncio.sleep(0.25)
    assert await turns() == [True, False, False]
    assert await turns(50) == [False, True, False]  # 150 requests reported: due early
    assert await turns() == [False, False, False]


async def test_export_then_import_reproduces_the_sessions(make_pool, store) -> None:
    """Counters, health, last use and errors, disables and overrides move to another pool; lease
    state does not."""
    pool = await make_pool(THREE, breaker_threshold=1)
    admin = PoolAdmin(pool)
    await pool.release(await pool.acquire(exclude=["b", "c"]), Outcome.SERVER, latency_ms=5)
    await pool.release(await pool.acquire(exclude=["a", "c"]), Outcome.SUCCESS, latency_ms=40)
    await admin.drain("c")
    await admin.set_weight("b", 3.0)
    snapshot = msgspec.json.encode(await export_state(admin))

    other = PoolAdmin(await make_pool(name="elsewhere"))
    assert await import_state(other, parse_snapshot(snapshot)) == 3
    before = msgspec.to_builtins(await admin.sessions())
    assert msgspec.to_builtins(await other.sessions()) == before
    again = msgspec.to_builtins(await export_state(other))
    assert again["sessions"] == msgspec.json.decode(snapshot)["sessions"]
    # The imported pool works: an acquire there picks among the imported sessions.
    assert (await other.pool.acquire()).session_id == "b"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"format": "other"}, "format"),
        ({"sessions": [{"id": "a", "ordinal": 1, "fields": {"in_flight": "3"}}]}, "in_flight"),
        ({"sessions": [{"id": "a b", "ordinal": 1, "fields": {}}]}, "id"),
        ({"pool_fields": {"secret": "x"}}, "secret"),
    ],
)
def test_bad_snapshots_are_refused_naming_the_problem(change: dict, message: str) -> None:
    """A snapshot with an unknown format, field or a bad id is refused with a clear message."""
    document = {
        "format": "session-broker/health-state", "version": 1, "pool": "p", "exported_at_ms": 1,
        "pool_fields": {}, "sessions": [],
    } | change  # fmt: skip
    with pytest.raises(SnapshotError, match=message):
        parse_snapshot(msgspec.json.encode(document))


async def test_restore_is_idempotent(make_pool) -> None:
    """Importing the same snapshot twice gives the same state as once."""
    pool = await make_pool(THREE[:2])
    await pool.release(await pool.acquire(), Outcome.SUCCESS, latency_ms=10)
    snapshot = await export_state(PoolAdmin(pool))
    target: Pool = await make_pool(name="target")
    await import_state(PoolAdmin(target), snapshot)
    once = msgspec.to_builtins(await PoolAdmin(target).sessions())
    await import_state(PoolAdmin(target), snapshot)
    assert msgspec.to_builtins(await PoolAdmin(target).sessions()) == once


async def test_reads_show_the_state_as_of_now_in_a_quiet_pool(make_pool) -> None:
    """A cooldown that ran out with no traffic since shows as over: reads run housekeeping."""
    pool = await make_pool(THREE[:1])
    admin = PoolAdmin(pool)
    await pool.release(await pool.acquire(), Outcome.RATE_LIMITED, retry_after_ms=50)
    assert (await pool.session_state("a"))["state"] == "cooling"
    await asyncio.sleep(0.1)
    assert (await pool.session_state("a"))["state"] == "cooling"  # nothing touched it yet
    assert (await admin.session("a")).state == "available"
    assert (await admin.census()).sessions["cooling"] == 0


#: Two tiers: tier 1 has two sessions with a unit budget and one without; tier 0 two plain ones.
TIERED = [
    Session(id="u0", secret="x-u0", priority=1, tpm=60_000),
    Session(id="u1", secret="x-u1", priority=1, tpm=30_000),
    Session(id="u2", secret="x-u2", priority=1),
    Session(id="l0", secret="x-l0"),
    Session(id="l1", secret="x-l1"),
]
#: Store ms one unit takes of a 60000 tpm budget (60000/tpm with the 2% quota slack).
MS_PER_UNIT = 1.02


async def test_views_and_summary_show_tiers_and_unit_budgets(make_pool) -> None:
    """Each view carries its tier and budget; the summary counts sessions and available ones per
    tier, best first, and adds the budgets up."""
    pool = await make_pool(TIERED)
    admin = PoolAdmin(pool)
    await admin.disable("u2")
    views = {v.id: v for v in await admin.sessions()}
    assert {i: (v.priority, v.tpm, v.units) for i, v in views.items()} == {
        "u0": (1, 60_000, 0), "u1": (1, 30_000, 0), "u2": (1, None, 0), "l0": (0, None, 0),
        "l1": (0, None, 0),
    }  # fmt: skip
    # A full budget is a minute's worth of units at the slackened spacing: 60000 / 1.02.
    assert (views["u0"].units_available, views["u1"].units_available) == (58_823, 29_411)
    assert views["l0"].units_available is None
    summary = await admin.summary()
    assert [(t.priority, t.sessions, t.available) for t in summary.tiers] == [(1, 3, 2), (0, 2, 2)]
    assert summary.units == UnitTotals(sessions=2, tpm=90_000, available=58_823 + 29_411)
    assert summary.sessions_read == 5
    # A tier with no eligible session is still listed, with 0 available.
    await admin.disable("u0")
    await admin.disable("u1")
    tiers = (await admin.census()).tiers
    assert [(t.priority, t.sessions, t.available) for t in tiers] == [(1, 3, 0), (0, 2, 2)]


async def test_units_reported_at_release_lower_what_is_available_until_it_refills(
    make_pool, redis, store_now_ms, store_reaches
) -> None:
    """Units a release reports come off the budget at once (by the store's clock, as the scripts
    charge them), and what is available grows back as the store's time passes."""
    pool = await make_pool(TIERED)
    admin = PoolAdmin(pool)
    before_ms = await store_now_ms()
    lease = await pool.acquire(exclude=["u1", "u2"])
    assert lease.session_id == "u0"
    await pool.release(lease, Outcome.SUCCESS, units=40_000)
    spent = await admin.census()
    schedule_ms = float(await redis.hget(pool.keys.session("u0"), "unit_tat"))
    left = spent.units["u0"].available
    # floor(a / b) as the scripts compute it: a float's // can land one below where / rounds up.
    assert left == math.floor((spent.now_ms + 60_000 - schedule_ms) / MS_PER_UNIT)
    # At most what a full budget holds minus the units, plus what refilled since the release.
    assert left <= (spent.now_ms - before_ms + 60_000 - 40_000 * MS_PER_UNIT) / MS_PER_UNIT
    assert spent.units["u1"].available == 29_411  # another session's budget is untouched
    view = await admin.session("u0")
    assert (view.units, view.tpm) == (40_000, 60_000)
    assert view.units_available is not None
    assert view.units_available >= left
    await store_reaches(spent.now_ms + 100)
    refilled = await admin.census()
    assert refilled.units["u0"].available >= left + 90
    assert refilled.units["u0"].available <= 58_823


async def test_census_of_a_large_pool_reads_a_bounded_number_of_sessions(make_pool) -> None:
    """Beyond ``limit`` sessions the census reads only the first ones: tier sizes are then
    unknown (None), while the eligible counts per tier stay exact."""
    admin = PoolAdmin(await make_pool(TIERED))
    census = await admin.census(limit=2)
    assert census.sessions_read == 2
    assert [(t.priority, t.sessions, t.available) for t in census.tiers] == [
        (1, None, 3), (0, None, 2),
    ]  # fmt: skip
    assert set(census.units) == {"u0", "u1"}


async def test_quota_deadline_shown_while_the_pace_admits_nothing(make_pool) -> None:
    """A session paced at 1 rpm shows state quota after its request, and when it is admitted
    again (``quota_until_ms``, about a minute on); a session not in quota shows None."""
    pool = await make_pool([Session(id="a", secret="s-a", rpm=1), THREE[1]])
    admin = PoolAdmin(pool)
    await pool.release(await pool.acquire(exclude=["b"]), Outcome.SUCCESS)
    now = await admin.now_ms()
    paced, other = await admin.sessions()
    assert paced.state == "quota"
    assert paced.quota_until_ms is not None
    # One request a minute, and the 2% slack the quota keeps (a full budget holds rpm/1.02).
    assert now + 55_000 < paced.quota_until_ms <= now + 62_000
    assert (other.state, other.quota_until_ms) == ("available", None)
    assert (await admin.session("a")).quota_until_ms == paced.quota_until_ms
