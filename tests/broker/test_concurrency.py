"""Concurrency limits under races: many asyncio tasks on several replicas, and several OS
processes. Holders are counted by the test itself (see worker.py), not by the broker."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import sys
from types import ModuleType

import pytest
from redis.asyncio import Redis

from broker import Outcome, Session
from tests.broker.conftest import REAL_REDIS_ONLY, WORKER, go_all, ready_workers

LIMITS = {"s0": 1, "s1": 2, "s2": 3}


def load_worker() -> ModuleType:
    spec = importlib.util.spec_from_file_location("broker_tests_worker", WORKER)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


worker = load_worker()


def limited_sessions() -> list[Session]:
    return [Session(id=i, secret=f"x-{i}", max_concurrency=n) for i, n in LIMITS.items()]


async def assert_all_returned(redis: Redis, pool_state, expected_leases: int) -> None:
    """After a race every slot is back and every lease counted once."""
    successes = 0
    for session_id in LIMITS:
        state = await pool_state(session_id)
        assert state["in_flight"] == "0"
        successes += int(state["n_success"])
        assert await redis.get(worker.counter_key(session_id)) == "0"
    assert successes == expected_leases


@pytest.mark.slow
async def test_tasks_never_exceed_max_concurrency(make_pool, redis: Redis) -> None:
    """Many tasks on three replicas acquiring at once never hold a session beyond its limit."""
    pools = [await make_pool(limited_sessions())] + [await make_pool() for _ in range(2)]
    tasks, iterations = 24, 12
    result = await worker.race(pools, redis, tasks, iterations)
    assert result.leases == tasks * iterations
    for session_id, limit in LIMITS.items():
        assert 1 <= result.max_holders[session_id] <= limit, result.max_holders
    assert result.max_holders["s2"] == LIMITS["s2"]  # the race did push a session to its limit
    assert result.busy > 0
    await assert_all_returned(redis, pools[0].session_state, tasks * iterations)


@REAL_REDIS_ONLY
@pytest.mark.slow
async def test_processes_never_exceed_max_concurrency(make_pool, redis: Redis, store) -> None:
    """Two OS processes racing with many tasks each never exceed a session's max_concurrency."""
    pool = await make_pool(limited_sessions())
    tasks, iterations = 12, 12
    async with ready_workers("race", store.url, str(tasks), str(iterations)) as processes:
        outputs = await go_all(processes, timeout_s=60)
    assert [process.returncode for process in processes] == [0, 0]
    results = [worker.RaceResult(**json.loads(stdout)) for stdout in outputs]
    combined = worker.RaceResult()
    for result in results:
        assert result.leases == tasks * iterations
        assert result.busy > 0
        combined.merge(result)
    for session_id, limit in LIMITS.items():
        assert 1 <= combined.max_holders[session_id] <= limit, combined.max_holders
    assert combined.max_holders["s2"] == LIMITS["s2"]
    await assert_all_returned(redis, pool.session_state, 2 * tasks * iterations)


@REAL_REDIS_ONLY
async def test_more_concurrent_calls_than_connections_wait_not_fail(make_pool) -> None:
    """Hundreds of concurrent acquires on one client wait for a connection instead of failing
    as if the store were down."""
    pool = await make_pool([Session(id=f"s{i}", secret=f"x{i}") for i in range(4)])
    leases = await asyncio.gather(*(pool.acquire() for _ in range(600)))
    assert len(leases) == 600
    await asyncio.gather(*(pool.release(lease, Outcome.SUCCESS) for lease in leases))
