"""Many clients through two replicas sharing one Redis: limits hold across the fleet."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import TYPE_CHECKING

import aiohttp

from broker import Session
from proxy.testing import SimulatedUpstream

if TYPE_CHECKING:
    from tests.proxy.conftest import StartReplica, StartUpstream

LIMITED = [Session(id=n, secret=f"secret-{n}", max_concurrency=2) for n in "abc"]


async def test_hundred_concurrent_requests_through_two_replicas(
    start_replica: StartReplica,
    serve_app: StartUpstream,
    shared_redis: str,
    http: aiohttp.ClientSession,
) -> None:
    """No session is ever over its max_concurrency at the upstream; every response is accounted
    for as a 200 or a 503 'all busy' (there is no queue yet), never anything else."""
    sim = SimulatedUpstream(latency_s=0.05)
    url = await serve_app(sim.app())
    replicas = [
        await start_replica(sessions=LIMITED, upstream_url=url, redis_url=shared_redis)
        for _ in range(2)
    ]

    async def one(index: int) -> int:
        target = replicas[index % 2].proxy_url
        async with http.post(target + "/v1/chat/completions", json={"model": "m"}) as response:
            await response.read()
            return response.status

    statuses = Counter(await asyncio.gather(*(one(i) for i in range(100))))
    assert statuses.total() == 100
    assert set(statuses) <= {200, 503}, statuses
    assert statuses[200] >= 6  # at least one full round of 3 sessions x 2 slots
    for session in LIMITED:
        stats = sim.stats[session.secret]
        assert stats.max_in_flight <= 2, f"{session.id} over its limit"
    assert sum(sim.attempts(s.secret) for s in LIMITED) == statuses[200]
    for session in LIMITED:
        state = await replicas[0].replica.pool.session_state(session.id)
        assert state["in_flight"] == "0"
