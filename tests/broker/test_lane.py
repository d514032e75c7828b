"""The lane: the pool's lighter script call path on a standalone Redis (broker/lane.py). It must
behave as redis-py's path does: the library loaded again where a server lost it, retries after a
dropped connection, a StoreError when the server does not answer, and never a reply read by the
wrong call."""

from __future__ import annotations

import asyncio

import fakeredis
import pytest
from redis.asyncio import Redis
from redis.asyncio.connection import Connection

from broker import BrokerSettings, Outcome, Pool, Release, Released, Session, StoreError, open_store
from broker.lane import IDLE_MAX, Lane, _pack
from broker.preamble import library_name
from tests.broker.conftest import REAL_REDIS_ONLY


async def until_blocked(redis: Redis) -> None:
    """Wait until the server holds a client's command back (CLIENT PAUSE)."""
    for _ in range(250):
        if (await redis.info("clients"))["blocked_clients"] >= 1:
            return
        await asyncio.sleep(0.02)
    pytest.fail("no command was ever held back")


async def libraries(redis: Redis) -> list[str]:
    """The names of the function libraries the server holds (FUNCTION LIST), sorted."""
    listed = await redis.function_list()
    return sorted(entry[entry.index("library_name") + 1] for entry in listed)


def test_lane_only_for_a_standalone_client(redis_server: str) -> None:
    """Standalone clients get a lane; the embedded store (and Sentinel, Cluster) use redis-py."""
    assert Lane.of(open_store(BrokerSettings(redis_url=redis_server))) is not None
    assert Lane.of(Redis.from_url(redis_server)) is not None
    assert Lane.of(fakeredis.FakeAsyncRedis(decode_responses=True)) is None
    assert Lane.of(open_store(BrokerSettings(redis_url=None))) is None


def test_hiredis_packs_as_redis_py_does() -> None:
    """The lane's packer sends the same bytes redis-py would for what the pool passes."""
    command = ("FCALL", "sb_0123_acquire", 1, "sb:{p}", "lease", -1, 0.1, 1.02, "", "é", 2**40)
    assert _pack(command) == b"".join(Connection().pack_command(*command))


async def test_library_loaded_again_after_a_flush(make_pool, redis: Redis) -> None:
    """A server that lost the library (restart, flush, failover) gets it on the next call."""
    pool = await make_pool([Session(id="a", secret="x")])
    await redis.function_flush()
    lease = await pool.acquire()
    await redis.function_flush()
    assert (await pool.release(lease, Outcome.SUCCESS)).status == "released"
    assert await libraries(redis) == [library_name()]


async def test_batch_loads_the_library_again(make_pool, redis: Redis) -> None:
    """Releases sent together to a server that lost the library all land once."""
    pool = await make_pool([Session(id=f"s{i}", secret=f"x{i}") for i in range(3)])
    leases = [await pool.acquire() for _ in range(3)]
    await redis.function_flush()
    results = await pool.release_many([Release(x, Outcome.SUCCESS) for x in leases])
    assert [r.status for r in results if isinstance(r, Released)] == ["released"] * 3
    states = [await pool.session_state(f"s{i}") for i in range(3)]
    assert sum(int(s.get("n_success", 0)) for s in states) == 3


@REAL_REDIS_ONLY
async def test_a_burst_after_a_flush_loads_the_library_once(make_pool, redis: Redis) -> None:
    """Many calls that all meet a server without the library: one load, and every call lands."""
    sessions = [Session(id=f"s{i}", secret=f"x{i}") for i in range(4)]
    pool: Pool = await make_pool(sessions)
    await redis.function_flush()
    await redis.config_resetstat()
    leases = await asyncio.gather(*(pool.acquire() for _ in range(32)))
    assert len({x.lease_id for x in leases}) == 32
    loads = (await redis.info("commandstats"))["cmdstat_function|load"]["calls"]
    assert loads == 1


async def test_a_server_of_an_older_release_keeps_its_library(make_pool, redis: Redis) -> None:
    """Loading this release's library leaves another release's (another name) in place, so
    replicas of both run side by side during a rollout."""
    older = "#!lua name=sb_older\nredis.register_function('sb_older_acquire', function() end)\n"
    await redis.function_flush()
    await redis.function_load(older)
    pool = await make_pool([Session(id="a", secret="x")])
    await pool.release(await pool.acquire(), Outcome.SUCCESS)
    assert await libraries(redis) == sorted(["sb_older", library_name()])


@REAL_REDIS_ONLY
async def test_dropped_connections_are_retried(make_pool, redis: Redis) -> None:
    """A call on a connection the server has closed reconnects and succeeds."""
    pool = await make_pool([Session(id="a", secret="x")])
    await pool.release(await pool.acquire(), Outcome.SUCCESS)
    lane_clients = [c["id"] for c in await redis.client_list() if c["cmd"] == "fcall"]
    assert lane_clients
    for client_id in lane_clients:
        await redis.client_kill_filter(_id=client_id)
    await pool.release(await pool.acquire(), Outcome.SUCCESS)
    assert (await pool.session_state("a"))["n_success"] == "2"


@REAL_REDIS_ONLY
async def test_cancelled_call_leaves_no_reply_behind(make_pool, redis: Redis) -> None:
    """A call cancelled while its reply is pending does not hand that reply to the next call."""
    pool = await make_pool([Session(id="a", secret="x"), Session(id="b", secret="y")])
    await redis.execute_command("CLIENT", "PAUSE", 5000, "WRITE")
    try:
        pending = asyncio.create_task(pool.acquire(lease_id="cancelled"))
        await until_blocked(redis)
        pending.cancel()
        with pytest.raises(asyncio.CancelledError):
            await pending
    finally:
        await redis.execute_command("CLIENT", "UNPAUSE")
    lease = await pool.acquire(lease_id="next")
    assert lease.lease_id == "next"
    assert (await pool.release(lease, Outcome.SUCCESS)).status == "released"


@REAL_REDIS_ONLY
async def test_unanswered_call_is_a_store_error(make_pool, redis: Redis) -> None:
    """A server that does not answer within the timeout (after the retries) is a StoreError;
    once it answers again, calls work."""
    pool = await make_pool([Session(id="a", secret="x")], redis_timeout_s=0.1)
    await redis.execute_command("CLIENT", "PAUSE", 60_000, "WRITE")
    try:
        with pytest.raises(StoreError):
            await pool.acquire()
    finally:
        await redis.execute_command("CLIENT", "UNPAUSE")
    await pool.release(await pool.acquire(), Outcome.SUCCESS)


@REAL_REDIS_ONLY
async def test_burst_beyond_the_idle_connections(make_pool) -> None:
    """More concurrent calls than the lane keeps all succeed; the surplus goes back to the pool."""
    sessions = [Session(id=f"s{i}", secret=f"x{i}") for i in range(4)]
    pool: Pool = await make_pool(sessions)
    leases = await asyncio.gather(*(pool.acquire() for _ in range(3 * IDLE_MAX)))
    released = await asyncio.gather(*(pool.release(x, Outcome.SUCCESS) for x in leases))
    assert {r.status for r in released} == {"released"}
    assert pool.gateway._lane is not None
    assert len(pool.gateway._lane._idle) == IDLE_MAX
