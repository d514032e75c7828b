"""Clients that retry on the proxy's own 429: the exact wait in ``retry-after-ms`` beside the
whole seconds of ``Retry-After``, and the official openai SDK retrying on it by itself."""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING

import aiohttp
import openai

from broker import Outcome, Session
from proxy.testing import SimulatedUpstream

if TYPE_CHECKING:
    from tests.proxy.conftest import StartReplica

CHAT = "/v1/chat/completions"
BODY = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
SESSIONS = [Session(id=name, secret=f"secret-{name}") for name in ("a", "b")]
#: How long every session cools: the wait the SDK must take, well short of Retry-After's 2 s.
COOLING_MS = 1500


async def cool_every_session(sim: SimulatedUpstream, http: aiohttp.ClientSession, url: str) -> None:
    """One request that both sessions answer 429 with a wait of COOLING_MS."""
    for session in SESSIONS:
        sim.force(session.secret, 429, {"retry-after-ms": str(COOLING_MS)})
    async with http.post(url + CHAT, json=BODY) as response:
        assert response.status == 429
        await response.read()
    for session in SESSIONS:
        sim.unforce(session.secret)


async def test_own_429_carries_the_exact_wait(
    start_replica: StartReplica, sim: SimulatedUpstream, http: aiohttp.ClientSession
) -> None:
    """The proxy's 429 says the wait twice: in ms, exact, and in whole seconds rounded up."""
    replica = await start_replica(sessions=SESSIONS)
    await cool_every_session(sim, http, replica.proxy_url)
    async with http.post(replica.proxy_url + CHAT, json=BODY) as response:
        assert response.status == 429
        assert (await response.json())["error"]["code"] == "all_sessions_cooling"
        wait_ms = int(response.headers["retry-after-ms"])
        assert 0 < wait_ms <= COOLING_MS
        assert int(response.headers["Retry-After"]) == math.ceil(wait_ms / 1000)


async def test_openai_sdk_retries_once_after_the_exact_wait(
    start_replica: StartReplica, sim: SimulatedUpstream, http: aiohttp.ClientSession
) -> None:
    """The openai SDK, its own retries on, meets every session cooling for 1.5 s: it waits what
    retry-after-ms says (not Retry-After's 2 s), retries once and succeeds."""
    replica = await start_replica(sessions=SESSIONS)
    cooled_from = time.time()  # each cooldown ends COOLING_MS after its release, after this
    await cool_every_session(sim, http, replica.proxy_url)
    arrived_before = len(sim.arrivals)
    client = openai.AsyncOpenAI(
        base_url=replica.proxy_url + "/v1", api_key="client-key", max_retries=3
    )
    async with client:
        asked_at = time.time()
        raw = await client.chat.completions.with_raw_response.create(
            model="m", messages=[{"role": "user", "content": "hi"}]
        )
    assert raw.http_response.status_code == 200
    assert raw.retries_taken == 1, "one retry, after the whole wait, is enough"
    retried = list(sim.arrivals)[arrived_before:]
    assert len(retried) == 1, "the refused try never reached the upstream"
    # The wait the SDK took: at least what was left of the cooldown (a retry before its end
    # would have been refused: two retries), and short of the 2 s of Retry-After alone.
    assert retried[0].at_s - cooled_from >= (COOLING_MS - 100) / 1000
    waited_s = retried[0].at_s - asked_at
    assert waited_s < 1.9, f"the SDK waited {waited_s:.2f} s: retry-after-ms was not used"


async def test_refusal_names_what_blocks_the_most_sessions(
    start_replica: StartReplica, http: aiohttp.ClientSession
) -> None:
    """One session at its concurrency limit and two cooling: 429 all_sessions_cooling, whose
    message counts each group, not 503 'every session at its concurrency limit'."""
    sessions = [Session(id=n, secret=f"secret-{n}", max_concurrency=1) for n in ("a", "b", "c")]
    replica = await start_replica(sessions=sessions)
    pool = replica.replica.pool
    for _ in range(2):
        await pool.release(await pool.acquire(), Outcome.RATE_LIMITED, retry_after_ms=60_000)
    held = await pool.acquire()
    try:
        async with http.post(replica.proxy_url + CHAT, json=BODY) as response:
            assert response.status == 429
            error = (await response.json())["error"]
    finally:
        await pool.release(held, Outcome.UNUSED)
    assert error["code"] == "all_sessions_cooling"
    assert error["message"] == (
        "no upstream session can serve now: 2 cooling down after a rate limit, "
        "1 at their concurrency limit; retry later"
    )
    assert int(response.headers["retry-after-ms"]) > 0
