"""The lane: the pool's lighter script call path on a standalone Redis (broker/lane.py). It must
behave as redis-py's Script path does: a reload on NOSCRIPT, retries after a dropped connection,
a StoreError when the server does not answer, and never a reply read by the wrong call."""

from __future__ import annotations

import asyncio

import fakeredis
import pytest
from redis.asyncio import Redis
from redis.asyncio.connection import Connection

from broker import BrokerSettings, Outcome, Pool, Release, Released, Session, StoreError, open_store
from broker.lane import IDLE_MAX, Lane, _pack
from tests.broker.conftest import REAL_REDIS_ONLY


async def until_blocked(redis: Redis) -> None:
    """Wait until the server holds a client's command back (CLIENT PAUSE)."""
    for _ in range(250):
        if (await redis.info("clients"))["blocked_clients"] >= 1:
            return
        await asyncio.sleep(0.02)
    pytest.fail("no command was ever held back")


def test_lane_only_for_a_standalone_client(redis_server: str) -> None:
    """Standalone clients get a lane; the embedded store (and Sentinel, Cluster) keep Script."""
    assert Lane.of(open_store(BrokerSettings(redis_url=redis_server))) is not None
    assert Lane.of(Redis.from_url(redis_server)) is not None
    assert Lane.of(fakeredis.FakeAsyncRedis(decode_responses=True)) is None
    assert Lane.of(open_store(BrokerSettings(redis_url=None))) is None


def test_hiredis_packs_as_redis_py_does() -> None:
    """The lane's packer sends the same bytes redis-py would for what the pool passes."""
    command = ("EVALSHA", "ab" * 20, 1, "sb:{p}", "lease", -1, 0.1, 1.02, "", "é", 2**40)
    assert _pack(command) == b"".join(Connection().pack_command(*command))


@REAL_REDIS_ONLY
async def test_script_reloaded_after_a_flush(make_pool, redis: Redis) -> None:
    """A server that lost its scripts (restart, failover) gets them again on the next call."""
    pool = await make_pool([Session(id="a", secret="x")])
    await redis.script_flush()
    lease = await pool.acquire()
    await redis.script_flush()
    assert (await pool.release(lease, Outcome.SUCCESS)).status == "released"


@REAL_REDIS_ONLY
async def test_batch_reloads_the_script(make_pool, redis: Redis) -> None:
    """Releases sent together to a server that lost its scripts all land once."""
    pool = await make_pool([Session(id=f"s{i}", secret=f"x{i}") for i in range(3)])
    leases = [await pool.acquire() for _ in range(3)]
    await redis.script_flush()
    results = await pool.release_many([Release(x, Outcome.SUCCESS) for x in leases])
    assert [r.status for r in results if isinstance(r, Released)] == ["released"] * 3
    states = [await pool.session_state(f"s{i}") for i in range(3)]
    assert sum(int(s.get("n_success", 0)) for s in states) == 3


@REAL_REDIS_ONLY
async def test_dropped_connections_are_retried(make_pool, redis: Redis) -> None:
    """A call on a connection the server has closed reconnects and succeeds."""
    pool = await make_pool([Session(id="a", secret="x")])
    await pool.release(await pool.acquire(), Outcome.SUCCESS)
    lane_clients = [c["id"] for c in await redis.client_list() if c["cmd"] == "evalsha"]
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
