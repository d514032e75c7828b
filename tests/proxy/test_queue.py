"""Waiting instead of failing, end to end: QUEUE_TIMEOUT, QUEUE_MAX and a client that leaves."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import TYPE_CHECKING

import aiohttp

from broker import Session
from proxy.testing import SimulatedUpstream

if TYPE_CHECKING:
    from tests.proxy.conftest import StartReplica, StartUpstream

CHAT = "/v1/chat/completions"
BODY = {"model": "m", "messages": []}
TWO = [Session(id=n, secret=f"secret-{n}") for n in "ab"]


async def post(http: aiohttp.ClientSession, url: str, **kwargs: object) -> int:
    async with http.post(url + CHAT, json=BODY, **kwargs) as response:  # type: ignore[arg-type]
        await response.read()
        return response.status


async def cool_everything(http: aiohttp.ClientSession, sim: SimulatedUpstream, url: str) -> None:
    for session in TWO:
        sim.force(session.secret, 429, {"Retry-After": "1"})
    await post(http, url)
    for session in TWO:
        sim.unforce(session.secret)


async def test_requests_wait_for_the_cooldown_to_end(
    start_replica: StartReplica, sim: SimulatedUpstream, http: aiohttp.ClientSession
) -> None:
    """All sessions cooling for 1 s and QUEUE_TIMEOUT=3: requests succeed after about 1 s."""
    replica = await start_replica(sessions=TWO, queue_timeout=3)
    await cool_everything(http, sim, replica.proxy_url)
    started = time.monotonic()
    statuses = await asyncio.gather(*(post(http, replica.proxy_url) for _ in range(4)))
    assert statuses == [200] * 4
    assert time.monotonic() - started >= 0.5  # they waited instead of failing


async def test_no_queue_timeout_answers_at_once(
    start_replica: StartReplica, sim: SimulatedUpstream, http: aiohttp.ClientSession
) -> None:
    """With QUEUE_TIMEOUT=0 (the default) the same requests get 429 at once."""
    replica = await start_replica(sessions=TWO)
    await cool_everything(http, sim, replica.proxy_url)
    assert await post(http, replica.proxy_url) == 429


async def test_client_deadline_shortens_the_wait(
    start_replica: StartReplica, sim: SimulatedUpstream, http: aiohttp.ClientSession
) -> None:
    """A client's X-Request-Timeout smaller than the wait gets its answer at once."""
    replica = await start_replica(sessions=TWO, queue_timeout=30)
    await cool_everything(http, sim, replica.proxy_url)
    started = time.monotonic()
    assert await post(http, replica.proxy_url, headers={"X-Request-Timeout": "0.2"}) == 429
    assert time.monotonic() - started < 0.9


async def test_queue_overflow_answers_at_once_and_leavers_leave(
    start_replica: StartReplica, serve_app: StartUpstream, http: aiohttp.ClientSession
) -> None:
    """Beyond QUEUE_MAX a request gets 503 at once; a client that disconnects while waiting
    leaves the queue."""
    sim = SimulatedUpstream(latency_s=2.0)
    one = [Session(id="a", secret="secret-a", max_concurrency=1)]
    replica = await start_replica(
        sessions=one, upstream_url=await serve_app(sim.app()), queue_timeout=10, queue_max=2
    )
    queue = replica.replica.leasing.served["default"].queue
    holder = asyncio.create_task(post(http, replica.proxy_url))
    await asyncio.sleep(0.3)
    waiters = [asyncio.create_task(post(http, replica.proxy_url)) for _ in range(2)]
    await asyncio.sleep(0.3)
    assert queue.depth == 2
    started = time.monotonic()
    async with http.post(replica.proxy_url + CHAT, json=BODY) as response:
        assert response.status == 503
        assert (await response.json())["error"]["code"] == "all_sessions_busy"
    assert time.monotonic() - started < 1.0
    for waiter in waiters:
        waiter.cancel()  # the clients go away
    await asyncio.gather(*waiters, return_exceptions=True)
    for _ in range(100):
        if queue.depth == 0:
            break
        await asyncio.sleep(0.02)
    assert queue.depth == 0
    assert await holder == 200


async def test_twenty_waiters_over_two_replicas_one_at_a_time(
    start_replica: StartReplica,
    serve_app: StartUpstream,
    shared_redis: str,
    http: aiohttp.ClientSession,
) -> None:
    """One session with max_concurrency=1 and 20 waiters spread over two replicas: all served,
    one at a time, in arrival order within each replica."""
    sim = SimulatedUpstream(latency_s=0.05)
    one = [Session(id="a", secret="secret-a", max_concurrency=1)]
    url = await serve_app(sim.app())
    replicas = [
        await start_replica(
            sessions=one, upstream_url=url, redis_url=shared_redis, queue_timeout=30
        )
        for _ in range(2)
    ]
    order: list[int] = []

    async def one_request(index: int) -> int:
        target = replicas[index % 2].proxy_url
        async with http.get(target + "/echo", headers={"X-Request-ID": str(index)}) as response:
            if response.status == 200:
                order.append(index)
            return response.status

    tasks = []
    for index in range(20):
        tasks.append(asyncio.create_task(one_request(index)))
        await asyncio.sleep(0.01)
    statuses = Counter(await asyncio.gather(*tasks))
    assert statuses == {200: 20}
    assert sim.stats["secret-a"].max_in_flight == 1
    for replica in (0, 1):
        mine = [index for index in order if index % 2 == replica]
        assert mine == sorted(mine), mine
