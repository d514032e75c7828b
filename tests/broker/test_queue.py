"""The wait queue: bounded waiting for the earliest free moment, FIFO per replica, one fleet-wide
order, woken by the store instead of polling."""

from __future__ import annotations

import asyncio
import time

import pytest

from broker import NoSessionAvailable, Outcome, QueueFull, Session, WaitQueue
from broker.leases import Ticket
from tests.broker.conftest import REAL_REDIS_ONLY


@pytest.fixture
async def make_queue():
    queues: list[WaitQueue] = []

    def make(pool, **options) -> WaitQueue:
        queue = WaitQueue(pool, max_waiting=options.pop("max_waiting", 100), **options)
        queue.start()
        queues.append(queue)
        return queue

    yield make
    for queue in queues:
        await queue.close()


async def cool_all(pool, sessions, ms: int) -> None:
    for session in sessions:
        lease = await pool.acquire(exclude=[s.id for s in sessions if s is not session])
        await pool.release(lease, Outcome.RATE_LIMITED, retry_after_ms=ms)


async def test_waits_for_a_cooldown_to_end(make_pool, make_queue) -> None:
    """All sessions cooling for 1 s and 3 s of patience: the lease comes after about 1 s."""
    sessions = [Session(id=n, secret=n) for n in "ab"]
    pool = await make_pool(sessions)
    await cool_all(pool, sessions, 1000)
    queue = make_queue(pool)
    started = time.monotonic()
    lease = await queue.acquire(timeout_s=3)
    assert lease.session_id in {"a", "b"}
    assert time.monotonic() - started >= 0.8  # it did wait for the cooldown
    assert queue.stats.served == 1


async def test_no_patience_fails_at_once(make_pool, make_queue) -> None:
    """With a timeout of 0 the refusal comes at once, saying why."""
    sessions = [Session(id="a", secret="a")]
    pool = await make_pool(sessions)
    await cool_all(pool, sessions, 1000)
    with pytest.raises(NoSessionAvailable) as caught:
        await make_queue(pool).acquire(timeout_s=0)
    assert caught.value.reason == "cooling"


async def test_a_wait_longer_than_the_deadline_is_refused_at_once(make_pool, make_queue) -> None:
    """When the earliest free moment is past the deadline, waiting cannot help: fail now."""
    sessions = [Session(id="a", secret="a")]
    pool = await make_pool(sessions)
    await cool_all(pool, sessions, 30_000)
    started = time.monotonic()
    with pytest.raises(NoSessionAvailable) as caught:
        await make_queue(pool).acquire(timeout_s=2)
    assert caught.value.reason == "cooling"
    assert time.monotonic() - started < 1.0


async def test_nothing_enabled_is_not_waited_for(make_pool, make_queue) -> None:
    """No enabled session will appear by itself: no wait."""
    pool = await make_pool([Session(id="a", secret="a", enabled=False)])
    with pytest.raises(NoSessionAvailable) as caught:
        await make_queue(pool).acquire(timeout_s=5)
    assert caught.value.reason == "disabled"


async def test_release_wakes_the_waiter(make_pool, make_queue) -> None:
    """A busy session freed by a release wakes the waiter through the store, not a timer."""
    pool = await make_pool([Session(id="a", secret="a", max_concurrency=1)])
    queue = make_queue(pool, fallback_s=60)  # only a wake-up can serve it in time
    held = await pool.acquire()
    waiter = asyncio.create_task(queue.acquire(timeout_s=10))
    await asyncio.sleep(0.3)
    assert not waiter.done()
    await pool.release(held, Outcome.SUCCESS)
    lease = await asyncio.wait_for(waiter, 5)
    assert lease.session_id == "a"


async def test_overflow_is_refused_at_once(make_pool, make_queue) -> None:
    """Beyond max_waiting, a request is refused at once with the queue's last known reason."""
    pool = await make_pool([Session(id="a", secret="a", max_concurrency=1)])
    queue = make_queue(pool, max_waiting=2)
    await pool.acquire()
    waiters = [asyncio.create_task(queue.acquire(timeout_s=10)) for _ in range(2)]
    await asyncio.sleep(0.2)
    assert queue.depth == 2
    with pytest.raises(QueueFull) as caught:
        await queue.acquire(timeout_s=10)
    assert caught.value.reason == "busy"
    assert queue.stats.overflows == 1
    for waiter in waiters:
        waiter.cancel()
    await asyncio.gather(*waiters, return_exceptions=True)


async def test_a_cancelled_waiter_leaves_the_queue(make_pool, make_queue, store) -> None:
    """A waiter whose client went away leaves this replica's line and the fleet's at once."""
    pool = await make_pool([Session(id="a", secret="a", max_concurrency=1)])
    queue = make_queue(pool)
    await pool.acquire()
    waiter = asyncio.create_task(queue.acquire(timeout_s=10))
    await asyncio.sleep(0.2)
    assert await pool.redis.zcard(pool.keys.waiters) == 1  # its ticket in the fleet queue
    waiter.cancel()
    await asyncio.gather(waiter, return_exceptions=True)
    assert queue.depth == 0
    for _ in range(50):
        if await pool.redis.zcard(pool.keys.waiters) == 0:
            break
        await asyncio.sleep(0.02)
    assert await pool.redis.zcard(pool.keys.waiters) == 0


async def test_timeout_says_why(make_pool, make_queue) -> None:
    """A waiter that runs out of patience gets the last reason and counts as a timeout."""
    pool = await make_pool([Session(id="a", secret="a", max_concurrency=1)])
    queue = make_queue(pool)
    await pool.acquire()
    with pytest.raises(NoSessionAvailable) as caught:
        await queue.acquire(timeout_s=0.3)
    assert caught.value.reason == "busy"
    assert queue.stats.timeouts == 1


async def test_fleet_fifo_one_at_a_time(make_pool, make_queue) -> None:
    """20 waiters over two replicas on one session with max_concurrency 1: all served, one at a
    time, in arrival order within each replica, and older waiters first across the fleet."""
    sessions = [Session(id="a", secret="a", max_concurrency=1)]
    pools = [await make_pool(sessions), await make_pool(sessions)]
    queues = [make_queue(pool) for pool in pools]
    held = await pools[0].acquire()
    served: list[tuple[int, int]] = []
    holders = 0
    most = 0

    async def waiter(index: int) -> None:
        nonlocal holders, most
        replica = index % 2
        lease = await queues[replica].acquire(timeout_s=30)
        holders += 1
        most = max(most, holders)
        served.append((replica, index))
        await asyncio.sleep(0.02)
        holders -= 1
        await pools[replica].release(lease, Outcome.SUCCESS)

    tasks = []
    for index in range(20):
        tasks.append(asyncio.create_task(waiter(index)))
        await asyncio.sleep(0.02)  # arrivals in a known order
    await pools[0].release(held, Outcome.SUCCESS)
    await asyncio.wait_for(asyncio.gather(*tasks), 30)
    assert len(served) == 20
    assert most == 1
    for replica in (0, 1):
        order = [index for r, index in served if r == replica]
        assert order == sorted(order), order
    # Across the fleet: nobody is served after a waiter that arrived much later than it.
    positions = {index: position for position, (_, index) in enumerate(served)}
    assert all(positions[i] < positions[j] for i in range(20) for j in range(i + 4, 20))


@REAL_REDIS_ONLY
async def test_no_polling_storm(make_pool, make_queue, redis) -> None:
    """Waiting costs the store a few calls per waiter, not a poll loop: counted by the store."""
    sessions = [Session(id="a", secret="a", max_concurrency=1)]
    pools = [await make_pool(sessions), await make_pool(sessions)]
    queues = [make_queue(pool) for pool in pools]
    held = await pools[0].acquire()

    async def waiter(index: int) -> None:
        lease = await queues[index % 2].acquire(timeout_s=30)
        await asyncio.sleep(0.05)
        await pools[index % 2].release(lease, Outcome.SUCCESS)

    await redis.config_resetstat()
    tasks = [asyncio.create_task(waiter(index)) for index in range(20)]
    await asyncio.sleep(1.5)  # everyone queued while the session is held
    await pools[0].release(held, Outcome.SUCCESS)
    await asyncio.wait_for(asyncio.gather(*tasks), 30)
    calls = int((await redis.info("commandstats"))["cmdstat_fcall"]["calls"])
    # Per waiter: its first refusal, one try on reaching its replica's head, its grant, its
    # release, and one losing try by the other replica's head when a session frees; plus, over
    # the 1.5 s hold, a fallback retry per head per second. A poll loop would cost thousands.
    assert calls <= 20 * 6, calls


async def test_a_waiter_behind_an_older_one_learns_the_paced_slot(make_pool) -> None:
    """A ticket refused as 'queued' behind an older ticket is told when the paced session's next
    slot opens, so it sleeps until then rather than until a wake nobody sends."""
    pool = await make_pool([Session(id="s0", secret="x", rpm=60)])
    await pool.acquire()  # the session's next slot is a second away
    older, younger = Ticket("older", 5_000), Ticket("younger", 5_000)
    with pytest.raises(NoSessionAvailable) as first:
        await pool.acquire(ticket=older)
    assert first.value.reason == "quota"
    with pytest.raises(NoSessionAvailable) as second:
        await pool.acquire(ticket=younger)
    assert second.value.reason == "queued"
    assert second.value.retry_after_ms is not None
    assert 0 < second.value.retry_after_ms <= 1_100
