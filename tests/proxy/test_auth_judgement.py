"""401/403 end to end (real sockets, two replicas, one shared Redis): a path that refuses every
credential is that path's answer and disables nobody; a revoked credential is disabled after at
most two requests, fleet-wide, with its alert."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import TYPE_CHECKING

import aiohttp
from aiohttp import web

from broker import Strategy
from broker.alerts import AlertRules, check_alerts

if TYPE_CHECKING:
    from tests.proxy.conftest import RunningReplica, StartReplica, StartUpstream

CHAT = "/v1/chat/completions"
FORBIDDEN = "/v1/admin/settings"


class Upstream:
    """Refuses FORBIDDEN to every credential (403) and every path to a revoked one (401);
    counts the attempts per credential and path."""

    def __init__(self) -> None:
        self.revoked: set[str] = set()
        self.attempts: Counter[tuple[str, str]] = Counter()

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        return app

    async def handle(self, request: web.Request) -> web.Response:
        secret = request.headers.get("Authorization", "").removeprefix("Bearer ")
        self.attempts[secret, request.path] += 1
        if secret in self.revoked:
            return web.json_response({"error": "invalid api key"}, status=401)
        if request.path == FORBIDDEN:
            return web.json_response({"error": "forbidden"}, status=403)
        return web.json_response({"ok": True})


async def two_replicas(
    start_replica: StartReplica, serve_app: StartUpstream, shared_redis: str, upstream: Upstream
) -> list[RunningReplica]:
    url = await serve_app(upstream.app())
    return [
        await start_replica(
            upstream_url=url,
            redis_url=shared_redis,
            session_selection_strategy=Strategy.ROUND_ROBIN,
        )
        for _ in range(2)
    ]


async def post(http: aiohttp.ClientSession, replica: RunningReplica, path: str) -> int:
    async with http.post(replica.proxy_url + path, json={"model": "m"}) as response:
        await response.read()
        return response.status


async def settle() -> None:
    """Releases leave in the background: give them a moment to land."""
    await asyncio.sleep(0.2)


async def test_a_path_refused_to_everyone_disables_nobody(
    start_replica: StartReplica,
    serve_app: StartUpstream,
    shared_redis: str,
    http: aiohttp.ClientSession,
) -> None:
    """Every request to a path that answers 403 to every credential gets that 403 after at most
    two attempts; every session stays enabled and keeps serving other paths."""
    upstream = Upstream()
    replicas = await two_replicas(start_replica, serve_app, shared_redis, upstream)
    for i in range(6):
        assert await post(http, replicas[i % 2], FORBIDDEN) == 403
        await settle()
    assert sum(n for (_, path), n in upstream.attempts.items() if path == FORBIDDEN) <= 12
    pool = replicas[0].replica.pool
    for session_id in ("a", "b", "c"):
        assert (await pool.session_state(session_id)).get("disabled_reason") is None
    statuses = Counter([await post(http, replicas[i % 2], CHAT) for i in range(6)])
    assert statuses == {200: 6}
    assert {secret for secret, path in upstream.attempts if path == CHAT} == {
        "secret-a",
        "secret-b",
        "secret-c",
    }


async def test_a_revoked_credential_is_disabled_within_two_requests(
    start_replica: StartReplica,
    serve_app: StartUpstream,
    shared_redis: str,
    http: aiohttp.ClientSession,
) -> None:
    """A credential that answers 401 to everything is disabled for both replicas after at most
    two requests reached it, with its auth alert; the clients get 200s."""
    upstream = Upstream()
    upstream.revoked.add("secret-a")
    replicas = await two_replicas(start_replica, serve_app, shared_redis, upstream)
    pool = replicas[1].replica.pool
    for i in range(10):
        assert await post(http, replicas[i % 2], CHAT) == 200
        await settle()
    assert sum(n for (secret, _), n in upstream.attempts.items() if secret == "secret-a") <= 2
    state = await pool.session_state("a")
    assert (state["state"], state["disabled_reason"]) == ("disabled", "auth")
    changes = await check_alerts(
        pool, AlertRules(error_rate=0.5, window_ms=60_000), attempts=0, errors=0
    )
    assert ("auth:a", "firing") in [(c.name, c.status) for c in changes]
