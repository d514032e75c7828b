"""A pool spread over several hash slots (broker/shards.py): placement, fall-through, the routing
of releases and renewals, and the pool an operator sees, on both backends."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis
from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot

from broker import (
    BrokerSettings,
    Lease,
    LeaseError,
    NoSessionAvailable,
    Outcome,
    Pool,
    PoolKeys,
    Release,
    Session,
    ShardedPool,
    Ticket,
    WaitQueue,
    open_pool,
)
from broker.alerts import AlertRules, check_alerts
from broker.shard_admin import ShardedAdmin, open_admin
from broker.shard_layout import shard_names, shard_of, shard_of_lease
from broker.snapshot import export_state, import_state
from tests.broker.conftest import MakeSessions, Store


async def sharded(
    store: Store, sessions: list[Session] | None, *, shards: int = 3, name: str = "P"
) -> ShardedPool:
    """A pool over ``shards`` on its own client of the test's store (another replica)."""
    settings = BrokerSettings(redis_url=store.url, shards=shards)
    pool = open_pool(store.connect(settings), settings, name=name)
    assert isinstance(pool, ShardedPool)
    if sessions is not None:
        await pool.sync(sessions)
    return pool


def one_per_shard(shards: int = 3) -> list[Session]:
    """Sessions ``s<i>``, the first of each shard, in shard order."""
    firsts: dict[int, Session] = {}
    for i in range(100):
        firsts.setdefault(shard_of(f"s{i}", shards), Session(id=f"s{i}", secret=f"secret-{i}"))
    return [firsts[k] for k in range(shards)]


@pytest.fixture
async def pools(store: Store) -> AsyncIterator[list[ShardedPool]]:
    """Sharded pools the test made (their clients are closed after it)."""
    made: list[ShardedPool] = []
    yield made
    for pool in made:
        await pool.redis.aclose()


def test_shard_names_are_stable_and_spread_over_the_slot_space() -> None:
    """N shards' hash tags fall one in each N-th of the slots; one shard is the pool itself."""
    assert shard_names("P", 1) == ("P",)
    for count in (2, 3, 5, 16):
        names = shard_names("chat", count)
        assert names == shard_names("chat", count)
        assert len(set(names)) == count
        for k, name in enumerate(names):
            slot = key_slot(name.encode())
            assert k * REDIS_CLUSTER_HASH_SLOTS // count <= slot
            assert slot < (k + 1) * REDIS_CLUSTER_HASH_SLOTS // count
    with pytest.raises(ValueError, match="shards must be 1-64"):
        shard_names("P", 0)


def test_a_lease_id_names_its_shard() -> None:
    assert shard_of_lease("abc@2", 3) == 2
    assert shard_of_lease("abc@3", 3) is None
    assert shard_of_lease("abc", 3) is None
    assert shard_of_lease("abc@x", 3) is None


async def test_one_shard_is_todays_pool(store: Store, make_sessions: MakeSessions) -> None:
    """shards=1 opens a plain Pool with the pool's own keys."""
    settings = BrokerSettings(redis_url=store.url)
    client = store.connect(settings)
    try:
        pool = open_pool(client, settings, name="P")
        assert type(pool) is Pool
        assert pool.keys == PoolKeys("P")
        assert await pool.sync(make_sessions(3)) == 3
        assert await client.zcard("sb:{P}:members") == 3
    finally:
        await client.aclose()


async def test_each_session_lives_in_its_shard(
    store: Store, redis: Redis, make_sessions: MakeSessions, pools: list[ShardedPool]
) -> None:
    """Sync puts each session in the shard its id hashes to, and only there; the sizes add up."""
    sessions = make_sessions(30)
    pool = await sharded(store, None)
    pools.append(pool)
    assert await pool.sync(sessions) == 30
    for k, shard in enumerate(pool.shards):
        members = set(await redis.zrange(shard.keys.members, 0, -1))
        assert members == {s.id for s in sessions if shard_of(s.id, 3) == k}
        assert members, "30 ids spread over 3 shards leave none empty"
    assert not await redis.exists("sb:{P}:members")
    second = await sharded(store, sessions)  # another replica agrees
    pools.append(second)
    assert await second.keep_claim() == 30


async def test_leases_come_from_every_shard_and_release_and_renew_reach_it(
    store: Store, redis: Redis, make_sessions: MakeSessions, pools: list[ShardedPool]
) -> None:
    """Acquires spread over the shards; each lease names its shard, and its renewal and its
    release (one by one, and several at once) go there."""
    pool = await sharded(store, make_sessions(12))
    pools.append(pool)
    random.seed(7)
    leases = [await pool.acquire() for _ in range(9)]
    assert {shard_of_lease(lease.lease_id, 3) for lease in leases} == {0, 1, 2}
    for lease in leases:
        k = shard_of_lease(lease.lease_id, 3)
        assert k == shard_of(lease.session_id, 3)
        assert lease.pool == "P"
        assert await redis.zscore(pool.shards[k].keys.leases, lease.lease_id) is not None
    renewed = await pool.renew(leases[0])
    assert renewed.expires_at_ms >= leases[0].expires_at_ms
    released = await pool.release(leases[0], Outcome.RATE_LIMITED, retry_after_ms=60_000)
    assert released.status == "released"
    assert released.cooldown_until_ms > 0
    state = await pool.session_state(leases[0].session_id)
    assert state["state"] == "cooling"
    results = await pool.release_many([Release(lease, Outcome.SUCCESS) for lease in leases[1:]])
    assert [getattr(r, "status", r) for r in results] == ["released"] * 8
    for shard in pool.shards:
        assert await redis.zcard(shard.keys.leases) == 0
    with pytest.raises(LeaseError, match="names no shard"):
        await pool.renew(Lease("P", "s0", "no-shard", 0))


async def test_a_shard_with_nothing_eligible_falls_through(
    store: Store, make_sessions: MakeSessions, pools: list[ShardedPool]
) -> None:
    """With every session but one busy, each acquire finds that one, whichever shard it asks
    first; when none is left the refusal adds up the shards' counts."""
    sessions = make_sessions(6, max_concurrency=1)
    pool = await sharded(store, sessions)
    pools.append(pool)
    held = [await pool.acquire() for _ in range(5)]
    free = ({s.id for s in sessions} - {lease.session_id for lease in held}).pop()
    for seed in range(10):
        random.seed(seed)
        lease = await pool.acquire()
        assert lease.session_id == free
        await pool.release(lease, Outcome.SUCCESS)
    last = await pool.acquire()
    with pytest.raises(NoSessionAvailable) as refused:
        await pool.acquire()
    assert refused.value.reason == "busy"
    assert refused.value.counts["busy"] == 6
    assert sum(refused.value.counts.values()) == 6
    await pool.release_many([Release(lease, Outcome.SUCCESS) for lease in [*held, last]])


async def test_exclude_is_kept_across_shards(
    store: Store, make_sessions: MakeSessions, pools: list[ShardedPool]
) -> None:
    """A request never gets a session it excluded, in any shard; excluding them all refuses."""
    sessions = make_sessions(6)
    pool = await sharded(store, sessions)
    pools.append(pool)
    tried: list[str] = []
    for _ in sessions:
        lease = await pool.acquire(exclude=tried)
        assert lease.session_id not in tried
        tried.append(lease.session_id)
        await pool.release(lease, Outcome.UNUSED)
    with pytest.raises(NoSessionAvailable) as refused:
        await pool.acquire(exclude=tried)
    assert refused.value.reason == "tried"


async def test_cooling_shards_say_the_earliest_moment(
    store: Store, make_sessions: MakeSessions, pools: list[ShardedPool]
) -> None:
    """All sessions cooling, each in its shard: the refusal is 'cooling' with the soonest end."""
    sessions = one_per_shard()
    pool = await sharded(store, sessions)
    pools.append(pool)
    for n, session in enumerate(sessions):
        lease = await pool.acquire(exclude=[s.id for s in sessions if s is not session])
        await pool.release(lease, Outcome.RATE_LIMITED, retry_after_ms=(n + 2) * 10_000)
    with pytest.raises(NoSessionAvailable) as refused:
        await pool.acquire()
    assert refused.value.reason == "cooling"
    assert refused.value.retry_after_ms is not None
    assert 15_000 < refused.value.retry_after_ms <= 20_000


async def test_a_waiter_leaves_every_shards_queue(
    store: Store, redis: Redis, make_sessions: MakeSessions, pools: list[ShardedPool]
) -> None:
    """A refused ticket holds a place in every shard; the grant in one shard, or giving up,
    takes it out of the others' queues."""
    sessions = make_sessions(3, max_concurrency=1)
    pool = await sharded(store, sessions)
    pools.append(pool)
    held = [await pool.acquire() for _ in range(3)]
    ticket = Ticket("t1", 5_000)
    with pytest.raises(NoSessionAvailable):
        await pool.acquire(ticket=ticket)
    queued = [await redis.zscore(shard.keys.waiters, "t1") for shard in pool.shards]
    assert all(score is not None for score in queued)
    await pool.release(held[0], Outcome.SUCCESS)
    lease = await pool.acquire(ticket=ticket)
    assert lease.session_id == held[0].session_id
    assert [await redis.zcard(shard.keys.waiters) for shard in pool.shards] == [0, 0, 0]
    with pytest.raises(NoSessionAvailable):
        await pool.acquire(ticket=Ticket("t2", 5_000))
    await pool.leave_queue(Ticket("t2", 5_000))
    assert [await redis.zcard(shard.keys.waiters) for shard in pool.shards] == [0, 0, 0]
    await pool.release_many([Release(lease, Outcome.SUCCESS) for lease in [*held[1:], lease]])


async def test_concurrency_stays_exact_under_many_tasks(
    store: Store, make_sessions: MakeSessions, pools: list[ShardedPool]
) -> None:
    """Two replicas, many tasks: a session's max_concurrency holds across shards and replicas."""
    sessions = make_sessions(6, max_concurrency=2)
    replicas = [await sharded(store, sessions), await sharded(store, sessions)]
    pools.extend(replicas)
    live: dict[str, int] = {}
    peak: dict[str, int] = {}

    async def one(pool: ShardedPool) -> None:
        try:
            lease = await pool.acquire()
        except NoSessionAvailable:
            return
        live[lease.session_id] = live.get(lease.session_id, 0) + 1
        peak[lease.session_id] = max(peak.get(lease.session_id, 0), live[lease.session_id])
        await asyncio.sleep(0.005)
        live[lease.session_id] -= 1
        await pool.release(lease, Outcome.SUCCESS)

    await asyncio.gather(*(one(replicas[n % 2]) for n in range(120)))
    assert peak
    assert max(peak.values()) <= 2
    assert len(peak) == 6


async def test_the_admin_sees_one_pool(
    store: Store, make_sessions: MakeSessions, pools: list[ShardedPool]
) -> None:
    """Sessions, census and summary add up the shards; actions reach the session's shard."""
    sessions = make_sessions(9, tpm=600)
    pool = await sharded(store, sessions)
    pools.append(pool)
    admin = open_admin(pool)
    assert isinstance(admin, ShardedAdmin)
    assert sorted(v.id for v in await admin.sessions()) == sorted(s.id for s in sessions)
    lease = await pool.acquire()
    census = await admin.census()
    assert census.sessions["total"] == 9
    assert census.leases == 1
    assert census.sessions_read == 9
    assert len(census.units) == 9
    assert [t.sessions for t in census.tiers] == [9]
    view = await admin.disable("s4", "broken")
    assert view.state == "disabled"
    summary = await admin.summary()
    assert summary.pool == "P"
    assert summary.sessions["disabled"] == 1
    assert summary.units is not None
    assert summary.units.tpm == 9 * 600
    assert (await admin.enable("s4")).state == "available"
    await pool.release(lease, Outcome.SUCCESS)


async def test_a_snapshot_moves_between_shard_counts(
    store: Store, make_sessions: MakeSessions, pools: list[ShardedPool]
) -> None:
    """Exported from 3 shards, imported into 2: each session's state lands in its new shard."""
    sessions = make_sessions(8)
    source = await sharded(store, sessions)
    pools.append(source)
    lease = await source.acquire(exclude=[s.id for s in sessions if s.id != "s5"])
    await source.release(lease, Outcome.SERVER, detail="502")
    await source.disable("s2", "broken")
    snapshot = await export_state(open_admin(source))
    assert snapshot.pool == "P"
    assert len(snapshot.sessions) == 8
    target = await sharded(store, sessions, shards=2, name="Q")
    pools.append(target)
    assert await import_state(open_admin(target), snapshot) == 8
    assert (await target.session_state("s5"))["last_error"] == "server: 502"
    assert (await target.session_state("s2"))["disabled_reason"] == "broken"
    assert (await target.shard_for("s5").session_state("s5"))["n_server"] == "1"


async def test_all_rate_limited_is_the_whole_pools(
    store: Store, make_sessions: MakeSessions, pools: list[ShardedPool]
) -> None:
    """all_rate_limited fires once every shard is spent, not when one is; it ends with the first
    shard that frees up."""
    sessions = one_per_shard()
    pool = await sharded(store, sessions)
    pools.append(pool)
    rules = AlertRules(error_rate=0.5, window_ms=60_000)
    leases = {}
    for session in sessions:
        leases[session.id] = await pool.acquire(exclude=[s.id for s in sessions if s != session])
    names: list[str] = []
    for session in sessions:
        await pool.release(leases[session.id], Outcome.RATE_LIMITED, retry_after_ms=60_000)
        names += [c.name for c in await check_alerts(pool, rules, attempts=0, errors=0)]
    assert names == ["all_rate_limited"]
    summary = await open_admin(pool).summary()
    assert "all_rate_limited" in summary.alerts
    first = sessions[0].id
    await pool.shard_for(first).gateway.reset_session(session_id=first)
    changes = await check_alerts(pool, rules, attempts=0, errors=0)
    assert [(c.name, c.status) for c in changes] == [("all_rate_limited", "resolved")]


async def test_traffic_follows_the_shards_sizes(
    store: Store, make_sessions: MakeSessions, pools: list[ShardedPool]
) -> None:
    """Requests one after another spread over the shards in proportion to their sessions (the
    best of two by load per session), not by the first shard drawn."""
    sessions = make_sessions(30)
    pool = await sharded(store, sessions)
    pools.append(pool)
    sizes = [sum(shard_of(s.id, 3) == k for s in sessions) for k in range(3)]
    grants = [0, 0, 0]
    for _ in range(300):
        lease = await pool.acquire()
        k = shard_of_lease(lease.lease_id, 3)
        assert k is not None
        grants[k] += 1
        await pool.release(lease, Outcome.SUCCESS)
    for k in range(3):
        assert abs(grants[k] / 300 - sizes[k] / 30) < 0.08, (grants, sizes)


async def test_a_waiting_request_is_woken_by_any_shard(
    store: Store, make_sessions: MakeSessions, pools: list[ShardedPool]
) -> None:
    """A WaitQueue over a sharded pool listens to every shard's wake channel: a session freed in
    any shard serves the waiter, well before its fallback poll."""
    sessions = make_sessions(6, max_concurrency=1)
    pool = await sharded(store, sessions)
    pools.append(pool)
    queue = WaitQueue(pool, max_waiting=10, fallback_s=30.0)
    queue.start()
    try:
        held = [await pool.acquire() for _ in range(6)]
        frees = (held.pop(0), held.pop())
        for freed in frees:
            waiter = asyncio.create_task(queue.acquire(timeout_s=10.0))
            await asyncio.sleep(0.2)
            assert not waiter.done()
            await pool.release(freed, Outcome.SUCCESS)
            lease = await asyncio.wait_for(waiter, 5.0)
            assert lease.session_id == freed.session_id
            held.append(lease)
        results = await pool.release_many([Release(lease, Outcome.SUCCESS) for lease in held])
        assert [getattr(r, "status", r) for r in results] == ["released"] * 6
    finally:
        await queue.close()
