"""Priority tiers through real replicas: the lower tier serves only while every session above it
is unavailable, fleet-wide, and stops as soon as one returns."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from broker import Pool, Session
from proxy.testing import SimulatedUpstream

from .conftest import StartReplica

TIERED = [
    Session(id="hi1", secret="secret-hi1", priority=1),
    Session(id="hi2", secret="secret-hi2", priority=1),
    Session(id="lo", secret="secret-lo"),
]


async def _get(http: aiohttp.ClientSession, url: str) -> None:
    async with http.post(f"{url}/echo") as response:
        assert response.status == 200


async def _until_state(pool: Pool, ids: list[str], state: str) -> None:
    for _ in range(200):
        states = [(await pool.session_state(i)).get("state") for i in ids]
        if all(s == state for s in states):
            return
        await asyncio.sleep(0.01)
    pytest.fail(f"{ids} never all {state}")


async def test_lower_tier_serves_only_while_the_upper_one_cannot(
    start_replica: StartReplica,
    sim: SimulatedUpstream,
    shared_redis: str,
    http: aiohttp.ClientSession,
) -> None:
    """Two replicas: all traffic on tier 1; both tier-1 sessions rate limited -> tier 0 takes it;
    one tier-1 session back -> tier 0 gets nothing more."""
    one = await start_replica(TIERED, redis_url=shared_redis)
    two = await start_replica(TIERED, redis_url=shared_redis)
    urls = [one.proxy_url, two.proxy_url]
    for url in urls * 5:
        await _get(http, url)
    assert sim.attempts("secret-lo") == 0
    assert sim.attempts("secret-hi1") + sim.attempts("secret-hi2") == 10

    sim.force("secret-hi1", 429, {"Retry-After": "30"})
    sim.force("secret-hi2", 429, {"Retry-After": "2"})
    await _get(http, urls[0])  # hi1 and hi2 answer 429; lo serves
    pool = one.replica.pool
    await _until_state(pool, ["hi1", "hi2"], "cooling")
    hi_before = sim.attempts("secret-hi1") + sim.attempts("secret-hi2")
    lo_before = sim.attempts("secret-lo")
    for url in urls * 3:
        await _get(http, url)
    assert sim.attempts("secret-hi1") + sim.attempts("secret-hi2") == hi_before
    assert sim.attempts("secret-lo") == lo_before + 6

    sim.unforce("secret-hi2")  # its 2 s cooldown ends; hi1 stays cooling for 30 s
    until_ms = int((await pool.session_state("hi2"))["cooldown_until"])
    for _ in range(100):  # until the store's clock passes the cooldown
        if (await pool.redis.time())[0] * 1000 > until_ms:
            break
        await asyncio.sleep(0.05)
    lo_now = sim.attempts("secret-lo")
    for url in urls * 3:
        await _get(http, url)
    assert sim.attempts("secret-lo") == lo_now
    assert sim.attempts("secret-hi2", 200) >= 6
