"""Lease releases leave in the background, in batches (proxy/replica/releases.py): the releases
handed over in one turn of the event loop go out together, and every one of them lands, also when
the replica stops right after."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

import pytest

from broker import BrokerSettings, Lease, Outcome, Pool, Release, Session, StoreError, open_store
from proxy.replica.releases import Releases

if TYPE_CHECKING:
    from tests.proxy.conftest import StartReplica

SESSIONS = [Session(id=f"s{i}", secret=f"secret-{i}") for i in range(3)]


async def distinct_leases(pool: Pool) -> list[Lease]:
    """One lease on each session."""
    leases: list[Lease] = []
    for _ in SESSIONS:
        leases.append(await pool.acquire(exclude=[lease.session_id for lease in leases]))
    return leases


@pytest.fixture(params=["embedded", "redis"])
async def pool(request: pytest.FixtureRequest, shared_redis: str) -> Any:
    """A pool of three sessions on the embedded store or on a real Redis (the lane's batches)."""
    settings = BrokerSettings(redis_url=shared_redis if request.param == "redis" else None)
    store = open_store(settings)
    pool = Pool(store, settings)
    await pool.sync(SESSIONS)
    yield pool
    await store.aclose()


async def test_releases_of_one_turn_leave_together_and_land(pool: Pool) -> None:
    """Releases handed over in one turn make one sending task; each lands with its outcome."""
    tasks: list[asyncio.Task[Any]] = []
    failures: list[StoreError] = []

    def spawn(work: Coroutine[Any, Any, None]) -> asyncio.Task[Any]:
        tasks.append(asyncio.create_task(work))
        return tasks[-1]

    releases = Releases(spawn=spawn, store_failed=failures.append)
    leases = await distinct_leases(pool)
    outcomes = [Outcome.SUCCESS, Outcome.SERVER, Outcome.RATE_LIMITED]
    for lease, outcome in zip(leases, outcomes, strict=True):
        releases.submit(pool, Release(lease, outcome, latency_ms=5))
    assert len(tasks) == 1
    await asyncio.gather(*tasks)
    assert not failures
    for lease, outcome in zip(leases, outcomes, strict=True):
        state = await pool.session_state(lease.session_id)
        assert state["in_flight"] == "0"
        assert state[f"n_{outcome.value}"] == "1"
    assert int((await pool.session_state(leases[2].session_id))["cooldown_until"]) > 0
    # The next turn's releases make a new task.
    releases.submit(pool, Release(await pool.acquire(), Outcome.UNUSED))
    assert len(tasks) == 2
    await tasks[1]


async def test_release_handed_over_at_close_lands(
    start_replica: StartReplica, shared_redis: str
) -> None:
    """Releases handed over right before the replica stops are sent before its store closes."""
    running = await start_replica(sessions=SESSIONS, redis_url=shared_redis)
    replica = running.replica
    leases = await distinct_leases(replica.pool)
    for lease in leases:
        replica.releases.submit(replica.pool, Release(lease, Outcome.SUCCESS))
    await running.stop()
    settings = BrokerSettings(redis_url=shared_redis)
    store = open_store(settings)
    try:
        observer = Pool(store, settings)
        for lease in leases:
            state = await observer.session_state(lease.session_id)
            assert (state["in_flight"], state["n_success"]) == ("0", "1")
    finally:
        await store.aclose()
