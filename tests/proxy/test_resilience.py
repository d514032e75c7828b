"""Resilience end to end: learning from rate-limit headers, auth disable, breakers and rpm quotas
through real replicas in front of a simulated upstream that enforces its limits exactly."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import TYPE_CHECKING

import aiohttp
import pytest

from broker import Session, Strategy
from proxy.testing import Limits, SimulatedUpstream

if TYPE_CHECKING:
    from tests.proxy.conftest import StartReplica, StartUpstream

CHAT = "/v1/chat/completions"
BODY = {"model": "m", "messages": []}
THREE = [Session(id=n, secret=f"secret-{n}") for n in "abc"]


async def post(http: aiohttp.ClientSession, url: str) -> int:
    async with http.post(url + CHAT, json=BODY) as response:
        await response.read()
        return response.status


async def test_exhausted_headers_cool_a_session_before_any_429(
    start_replica: StartReplica, serve_app: StartUpstream, http: aiohttp.ClientSession
) -> None:
    """A session whose answer says 0 requests remain is cooled until the reset: the upstream never
    gets to answer 429, although the broker was told no rpm."""
    sim = SimulatedUpstream(
        limits={s.secret: Limits(rpm=60, burst=1) for s in THREE}, ratelimit_headers=True
    )
    replica = await start_replica(upstream_url=await serve_app(sim.app()))
    statuses = Counter([await post(http, replica.proxy_url) for _ in range(3)])
    assert statuses == {200: 3}
    states = [await replica.replica.pool.session_state(s.id) for s in THREE]
    assert [s["state"] for s in states] == ["cooling"] * 3
    assert all("n_rate_limited" not in s for s in states)
    assert sum(sim.attempts(s.secret, 429) for s in THREE) == 0


@pytest.mark.parametrize("family", ["none"])
async def test_header_learning_can_be_turned_off(
    start_replica: StartReplica,
    serve_app: StartUpstream,
    http: aiohttp.ClientSession,
    family: str,
) -> None:
    """RATE_LIMIT_HEADER_FAMILIES=none ignores the headers: the session stays available."""
    sim = SimulatedUpstream(limits={"secret-a": Limits(rpm=60)}, ratelimit_headers=True)
    replica = await start_replica(
        sessions=THREE[:1],
        upstream_url=await serve_app(sim.app()),
        rate_limit_header_families=family,
    )
    assert await post(http, replica.proxy_url) == 200
    assert (await replica.replica.pool.session_state("a"))["state"] == "available"


async def test_401_disables_the_session_for_every_replica(
    start_replica: StartReplica,
    shared_redis: str,
    sim: SimulatedUpstream,
    http: aiohttp.ClientSession,
) -> None:
    """A revoked credential (401) is disabled with reason auth; no replica uses it again."""
    one = await start_replica(
        redis_url=shared_redis, session_selection_strategy=Strategy.ROUND_ROBIN
    )
    two = await start_replica(
        redis_url=shared_redis, session_selection_strategy=Strategy.ROUND_ROBIN
    )
    sim.force("secret-a", 401)
    assert await post(http, one.proxy_url) == 200
    sim.unforce("secret-a")
    for _ in range(10):
        assert await post(http, two.proxy_url) == 200
    assert sim.attempts("secret-a") == 1
    state = await two.replica.pool.session_state("a")
    assert (state["state"], state["disabled_reason"]) == ("disabled", "auth")


async def test_breaker_takes_a_failing_session_out(
    start_replica: StartReplica, sim: SimulatedUpstream, http: aiohttp.ClientSession
) -> None:
    """After CIRCUIT_BREAKER_THRESHOLD 5xx answers a session is not used until its timeout."""
    replica = await start_replica(
        circuit_breaker_threshold=2, session_selection_strategy=Strategy.ROUND_ROBIN
    )
    sim.force("secret-a", 500)
    for _ in range(6):
        assert await post(http, replica.proxy_url) == 200
    assert sim.attempts("secret-a") == 2
    assert (await replica.replica.pool.session_state("a"))["breaker"] == "open"


async def test_all_breakers_open_is_503_with_retry_after(
    start_replica: StartReplica, sim: SimulatedUpstream, http: aiohttp.ClientSession
) -> None:
    """With every session's breaker open the client gets 503 and when to come back."""
    replica = await start_replica(circuit_breaker_threshold=1, circuit_breaker_timeout=30)
    for s in THREE:
        sim.force(s.secret, 502)
    await post(http, replica.proxy_url)
    async with http.post(replica.proxy_url + CHAT, json=BODY) as response:
        assert response.status == 503
        assert (await response.json())["error"]["code"] == "all_sessions_failing"
        assert 28 <= int(response.headers["Retry-After"]) <= 30


@pytest.mark.slow
async def test_rpm_quota_means_no_upstream_429_at_twice_the_load(
    start_replica: StartReplica,
    serve_app: StartUpstream,
    shared_redis: str,
    http: aiohttp.ClientSession,
) -> None:
    """3 sessions at 60 rpm (burst 2) behind an upstream enforcing exactly that, driven at twice
    the total quota through two replicas for 30 s: zero 429s reach the upstream and goodput is
    within 5% of the quota."""
    sessions = [Session(id=n, secret=f"secret-{n}", rpm=60, burst=2) for n in "abc"]
    sim = SimulatedUpstream(limits={s.secret: Limits(rpm=60, burst=2) for s in sessions})
    url = await serve_app(sim.app())
    replicas = [
        await start_replica(sessions=sessions, upstream_url=url, redis_url=shared_redis)
        for _ in range(2)
    ]
    duration_s, rate = 30.0, 6.0  # 2 x (3 sessions x 1 request/s)
    statuses: Counter[int] = Counter()

    async def one(index: int) -> None:
        statuses[await post(http, replicas[index % 2].proxy_url)] += 1

    started = time.monotonic()
    pending = []
    for index in range(int(duration_s * rate)):
        await asyncio.sleep(max(0.0, started + index / rate - time.monotonic()))  # open loop
        pending.append(asyncio.create_task(one(index)))
    await asyncio.gather(*pending)
    upstream_429 = sum(sim.attempts(s.secret, 429) for s in sessions)
    upstream_ok = sum(sim.attempts(s.secret, 200) for s in sessions)
    quota = len(sessions) * duration_s  # 1 request/s each
    assert upstream_429 == 0
    assert upstream_ok == statuses[200]
    assert upstream_ok >= 0.95 * quota, (upstream_ok, statuses)
    assert set(statuses) <= {200, 429}
