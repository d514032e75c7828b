"""Each transition is logged once for the fleet: a wave of 429s that several requests on two
replicas meet on one session is one "session rate limited" line, by the replica whose release
started the cooldown."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import aiohttp
from aiohttp import web
from structlog.testing import capture_logs

from broker import Session

if TYPE_CHECKING:
    from tests.proxy.conftest import StartReplica, StartUpstream

CHAT = "/v1/chat/completions"
BODY = {"model": "m", "messages": []}
#: Requests of the wave: every one holds a lease on the one session when the 429s come back.
WAVE = 7


class WaveUpstream:
    """Holds each request until WAVE have arrived, then answers every one 429."""

    def __init__(self) -> None:
        self.barrier = asyncio.Barrier(WAVE)

    async def handle(self, request: web.Request) -> web.Response:
        await request.read()
        async with asyncio.timeout(10):
            await self.barrier.wait()
        return web.json_response(
            {"error": {"message": "slow down"}}, status=429, headers={"Retry-After": "30"}
        )

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post(CHAT, self.handle)
        return app


async def test_a_wave_of_429s_is_logged_once(
    start_replica: StartReplica,
    serve_app: StartUpstream,
    shared_redis: str,
    http: aiohttp.ClientSession,
) -> None:
    """Seven requests over two replicas meet one 429 wave: one info line for the cooldown, and
    the one transition into cooling."""
    upstream = await serve_app(WaveUpstream().app())
    sessions = [Session(id="a", secret="secret-a")]
    options = {"redis_url": shared_redis, "upstream_url": upstream, "pool": "wave"}
    replicas = [await start_replica(sessions=sessions, **options) for _ in range(2)]

    async def ask(i: int) -> int:
        async with http.post(replicas[i % 2].proxy_url + CHAT, json=BODY) as response:
            await response.read()
            return response.status

    with capture_logs() as logs:
        statuses = await asyncio.gather(*(ask(i) for i in range(WAVE)))
        await asyncio.sleep(0.2)  # the releases leave in the background
    assert statuses == [429] * WAVE
    info = [e for e in logs if e["log_level"] == "info"]
    limited = [e for e in info if e["event"] == "session rate limited"]
    assert len(limited) == 1, [e["event"] for e in info]
    assert limited[0]["session"] == "a"
    assert sum(e["event"] == "session cooling down" for e in info) == 1
