"""Claims: the pool holds every session some live replica's configuration names, so replicas that
briefly disagree (a rollout, a Secret reaching pods at different moments) never take each other's
sessions away, and a session leaves once the last claim naming it is replaced, dropped or
expired."""

from __future__ import annotations

import asyncio

import pytest
from redis.asyncio import Redis

from broker import NoSessionAvailable, Outcome, Pool, Session
from broker.constants import SYNC_CHUNK


def named(*ids: str) -> list[Session]:
    return [Session(id=i, secret=f"secret-{i}") for i in ids]


async def members(redis: Redis, pool: Pool) -> set[str]:
    return set(await redis.zrange(pool.keys.members, 0, -1))


async def test_a_replica_with_an_older_configuration_removes_nothing_new(
    make_pool, redis: Redis
) -> None:
    """Mid-rollout, an old replica that (re)syncs its old list leaves the new sessions in the
    pool; each replica's own removals still take effect once nobody names the session."""
    new = await make_pool(named("b", "c", "d"))
    old = await make_pool(named("a", "b", "c"))
    assert await members(redis, new) == {"a", "b", "c", "d"}
    restarted_old = await make_pool(named("a", "b", "c"))
    assert await members(redis, new) == {"a", "b", "c", "d"}
    await old.sync(named("b", "c", "d"))
    await restarted_old.sync(named("b", "c", "d"))
    assert await members(redis, new) == {"b", "c", "d"}
    assert (await new.session_state("a"))["state"] == "removed"


async def test_a_session_leaves_with_the_last_claim_naming_it(make_pool, redis: Redis) -> None:
    """Removed from one replica's list, a session stays while another names it; removed from
    both, it is never leased again, yet its history is kept and returns with it."""
    first = await make_pool(named("a", "b"))
    second = await make_pool(named("a", "b"))
    lease = await first.acquire(exclude=["b"])
    await first.release(lease, Outcome.SUCCESS)
    await first.sync(named("b"))
    assert await members(redis, first) == {"a", "b"}
    await second.sync(named("b"))
    assert await members(redis, first) == {"b"}
    with pytest.raises(NoSessionAvailable):
        await first.acquire(exclude=["b"])
    await second.sync(named("a", "b"))
    assert (await second.acquire(exclude=["b"])).session_id == "a"
    assert (await second.session_state("a"))["n_success"] == "1"


async def test_leave_drops_what_only_this_replica_named(make_pool, redis: Redis) -> None:
    """A replica that leaves takes out the sessions no other replica names, at once."""
    staying = await make_pool(named("a", "b"))
    stopping = await make_pool(named("b", "c"))
    assert await stopping.leave() == 2
    assert await members(redis, staying) == {"a", "b"}


async def test_a_dead_replicas_claim_expires(make_pool, redis: Redis) -> None:
    """A replica that stops renewing loses its claim: the next renewal by another replica
    removes the sessions only the dead one named."""
    live = await make_pool(named("a"), claim_ttl_ms=400)
    await make_pool(named("a", "ghost"), claim_ttl_ms=400)
    assert await members(redis, live) == {"a", "ghost"}
    for _ in range(4):
        await asyncio.sleep(0.15)
        await live.keep_claim()
    assert await members(redis, live) == {"a"}


async def test_a_replica_whose_claim_expired_claims_again(make_pool, redis: Redis) -> None:
    """A replica cut off from the store for longer than its claim finds it dropped on its next
    renewal and syncs its sessions again, history intact."""
    witness = await make_pool(named("a"), claim_ttl_ms=200)
    late = await make_pool(named("a", "b"), claim_ttl_ms=200)
    lease = await late.acquire(exclude=["a"])
    await late.release(lease, Outcome.SERVER)
    await asyncio.sleep(0.3)
    await witness.keep_claim()
    assert await members(redis, witness) == {"a"}
    assert await late.keep_claim() == 2
    assert (await late.session_state("b"))["n_server"] == "1"
    assert (await late.acquire(exclude=["a"])).session_id == "b"


async def test_keep_claim_without_a_sync_changes_nothing(make_pool, redis: Redis) -> None:
    """Renewing a claim never made adds nothing and removes nothing."""
    synced = await make_pool(named("a"))
    idle = await make_pool()
    assert await idle.keep_claim() == 1
    assert await members(redis, synced) == {"a"}


@pytest.mark.parametrize("backend", [pytest.param("redis", id="redis")])
async def test_a_pool_larger_than_one_call(make_pool, redis: Redis) -> None:
    """A configuration sent in several calls is claimed whole by the last one, in order."""
    sessions = [Session(id=f"s{n}", secret="x") for n in range(SYNC_CHUNK + 3)]
    pool = await make_pool(sessions)
    assert await members(redis, pool) == {s.id for s in sessions}
    order = await redis.zrange(pool.keys.members, 0, -1)
    assert order == [s.id for s in sessions]
    assert await pool.sync(sessions[:2]) == 2
