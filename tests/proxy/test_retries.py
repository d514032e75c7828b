"""The retry loop: cooldowns from Retry-After shared by replicas, failover, and the answers when
no session can serve."""

from __future__ import annotations

import asyncio
import email.utils
import io
import json
import time
from typing import TYPE_CHECKING

import aiohttp
import pytest

from broker import Session, Strategy
from broker.constants import PROBE_COOLDOWN_MS
from proxy.testing import SimulatedUpstream

if TYPE_CHECKING:
    from tests.proxy.conftest import StartReplica

CHAT = "/v1/chat/completions"
BODY = {"model": "m", "messages": []}


async def post(http: aiohttp.ClientSession, url: str) -> aiohttp.ClientResponse:
    async with http.post(url + CHAT, json=BODY) as response:
        await response.read()
        return response


async def cooldown_left_ms(replica, session_id: str) -> int:  # type: ignore[no-untyped-def]
    state = await replica.replica.pool.session_state(session_id)
    return int(state.get("cooldown_until", 0)) - int(time.time() * 1000)


@pytest.mark.slow
async def test_429_cools_the_session_for_both_replicas(
    start_replica: StartReplica,
    shared_redis: str,
    sim: SimulatedUpstream,
    http: aiohttp.ClientSession,
) -> None:
    """After a 429 with Retry-After: 2 neither replica uses that session for 2 s; then both may."""
    options = {"redis_url": shared_redis, "session_selection_strategy": Strategy.ROUND_ROBIN}
    one = await start_replica(**options)
    two = await start_replica(**options)
    sim.force("secret-a", 429, {"Retry-After": "2"})
    first = await post(http, one.proxy_url)
    assert first.status == 200  # failed over to another session at once
    assert sim.attempts("secret-a", 429) == 1
    sim.unforce("secret-a")
    cooled_at = time.monotonic()
    while time.monotonic() - cooled_at < 1.7:
        for replica in (one, two):
            assert (await post(http, replica.proxy_url)).status == 200
    assert sim.attempts("secret-a") == 1, "a cooling session was used"
    await asyncio.sleep(max(0.0, 2.1 - (time.monotonic() - cooled_at)))
    for _ in range(6):
        await post(http, two.proxy_url)
    assert sim.attempts("secret-a", 200) >= 1, "the session never came back"


async def test_http_date_retry_after(
    start_replica: StartReplica, sim: SimulatedUpstream, http: aiohttp.ClientSession
) -> None:
    """A Retry-After given as an HTTP-date cools the session until that date."""
    replica = await start_replica()
    when = email.utils.formatdate(time.time() + 30, usegmt=True)
    sim.force("secret-a", 429, {"Retry-After": when})
    sim.force("secret-b", 429, {"Retry-After": when})
    sim.force("secret-c", 429, {"Retry-After": when})
    await post(http, replica.proxy_url)
    for name in "abc":
        assert 28_000 <= await cooldown_left_ms(replica, name) <= 31_000


async def test_garbage_retry_after_falls_back_to_the_default(
    start_replica: StartReplica, sim: SimulatedUpstream, http: aiohttp.ClientSession
) -> None:
    """With RATE_LIMIT_LEARNING=false, an unusable Retry-After gives the RATE_LIMIT_COOLDOWN
    default instead; with learning on, the short probe cooldown."""
    flat = await start_replica(
        sessions=[Session(id="a", secret="secret-a")],
        rate_limit_cooldown=45,
        rate_limit_learning=False,
        pool="flat",  # its own pool: the pool-wide setting is the last syncing replica's
    )
    sim.force("secret-a", 429, {"Retry-After": "soon"})
    await post(http, flat.proxy_url)
    assert 43_000 <= await cooldown_left_ms(flat, "a") <= 45_500
    learning = await start_replica(
        sessions=[Session(id="b", secret="secret-b")], rate_limit_cooldown=45, pool="learning"
    )
    sim.force("secret-b", 429, {"Retry-After": "soon"})
    await post(http, learning.proxy_url)
    assert 0 < await cooldown_left_ms(learning, "b") <= PROBE_COOLDOWN_MS


async def test_retry_after_is_clamped(
    start_replica: StartReplica, sim: SimulatedUpstream, http: aiohttp.ClientSession
) -> None:
    """An absurd Retry-After is cut to RATE_LIMIT_COOLDOWN_MAX, never overflowing."""
    replica = await start_replica(
        sessions=[Session(id="a", secret="secret-a")], rate_limit_cooldown_max=120
    )
    sim.force("secret-a", 429, {"Retry-After": "99999999999999999999"})
    await post(http, replica.proxy_url)
    assert 118_000 <= await cooldown_left_ms(replica, "a") <= 120_500


async def test_all_cooling_is_429_with_retry_after(
    start_replica: StartReplica, sim: SimulatedUpstream, http: aiohttp.ClientSession
) -> None:
    """With every session cooling, the client gets 429, a JSON error and the earliest wait."""
    replica = await start_replica()
    for name, wait in (("a", "50"), ("b", "20"), ("c", "40")):
        sim.force(f"secret-{name}", 429, {"Retry-After": wait})
    await post(http, replica.proxy_url)  # cools all three
    async with http.post(replica.proxy_url + CHAT, json=BODY) as response:
        assert response.status == 429
        assert 18 <= int(response.headers["Retry-After"]) <= 20
        error = (await response.json())["error"]
        assert error["code"] == "all_sessions_cooling"
    assert sim.attempts("secret-b") == 1, "a cooling session was tried again"


async def test_last_attempt_answer_is_returned_when_sessions_run_out(
    start_replica: StartReplica, sim: SimulatedUpstream, http: aiohttp.ClientSession
) -> None:
    """Every session answers 503: each is tried once and the last upstream answer comes back."""
    replica = await start_replica()
    for name in "abc":
        sim.force(f"secret-{name}", 503)
    async with http.post(replica.proxy_url + CHAT, json=BODY) as response:
        assert response.status == 503
        assert (await response.json())["error"]["message"] == "forced 503"
    assert [sim.attempts(f"secret-{n}") for n in "abc"] == [1, 1, 1]
    states = [await replica.replica.pool.session_state(n) for n in "abc"]
    assert [s.get("n_server") for s in states] == ["1", "1", "1"]
    assert all(s["state"] == "available" for s in states), "a 503 must not disable or cool"


async def test_none_enabled_is_503(
    start_replica: StartReplica, http: aiohttp.ClientSession
) -> None:
    """With no session enabled the client gets 503 and a JSON error, never a 500."""
    replica = await start_replica(sessions=[Session(id="a", secret="secret-a", enabled=False)])
    async with http.post(replica.proxy_url + CHAT, json=BODY) as response:
        assert response.status == 503
        assert (await response.json())["error"]["code"] == "no_session_enabled"


async def test_server_error_and_auth_fail_over(
    start_replica: StartReplica, sim: SimulatedUpstream, http: aiohttp.ClientSession
) -> None:
    """A 500 and a 401 each move the request to another session; the outcomes are recorded."""
    replica = await start_replica(session_selection_strategy=Strategy.ROUND_ROBIN)
    sim.force("secret-a", 500)
    sim.force("secret-b", 401)
    assert (await post(http, replica.proxy_url)).status == 200
    a = await replica.replica.pool.session_state("a")
    b = await replica.replica.pool.session_state("b")
    assert a["n_server"] == "1"
    assert a["last_error"] == "server: 500"
    assert b["n_auth"] == "1"
    assert sim.attempts("secret-c", 200) == 1


async def test_backoff_spaces_retries_after_server_errors(
    start_replica: StartReplica, sim: SimulatedUpstream, http: aiohttp.ClientSession
) -> None:
    """With backoff on, retries after 5xx still happen and still end in the last answer."""
    replica = await start_replica(
        exponential_backoff_enabled=True, backoff_base=0.01, backoff_max=0.02
    )
    for name in "abc":
        sim.force(f"secret-{name}", 502)
    assert (await post(http, replica.proxy_url)).status == 502
    assert sum(sim.attempts(f"secret-{n}") for n in "abc") == 3


async def test_retry_count_bounds_attempts(
    start_replica: StartReplica, sim: SimulatedUpstream, http: aiohttp.ClientSession
) -> None:
    """RETRY_COUNT caps the attempts of one request."""
    replica = await start_replica(retry_count=2)
    for name in "abc":
        sim.force(f"secret-{name}", 500)
    assert (await post(http, replica.proxy_url)).status == 500
    assert sum(sim.attempts(f"secret-{n}") for n in "abc") == 2


@pytest.mark.parametrize("size", [100, 500_000], ids=["arrived-with-headers", "streamed"])
async def test_body_sent_again_whole_on_a_retry(
    start_replica: StartReplica, sim: SimulatedUpstream, http: aiohttp.ClientSession, size: int
) -> None:
    """The retry after a 429 carries the whole body again, whether it had all arrived before the
    first attempt (sent as bytes) or streamed through during it."""
    replica = await start_replica(session_selection_strategy=Strategy.ROUND_ROBIN)
    sim.force("secret-a", 429, {"Retry-After": "30"})
    body = {"model": "m", "messages": [{"role": "user", "content": "x" * size}]}
    data = io.BytesIO(json.dumps(body).encode())  # a large bytes body makes aiohttp warn
    headers = {"Content-Type": "application/json"}
    async with http.post(replica.proxy_url + CHAT, data=data, headers=headers) as response:
        assert response.status == 200  # the upstream parsed the resent body as JSON
    assert sim.attempts("secret-a", 429) == 1
    assert sim.attempts("secret-b", 200) == 1
