"""Alerts to a webhook: each start and end of an alert is sent once for the whole fleet, and a
webhook that fails is retried in the background."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import aiohttp
from aiohttp import web

from broker import Session, Strategy
from proxy.testing import SimulatedUpstream

if TYPE_CHECKING:
    from proxy.serve import RunningReplica
    from tests.proxy.conftest import StartReplica, StartUpstream

CHAT = "/v1/chat/completions"
BODY = {"model": "m", "messages": []}
TWO = [Session(id=n, secret=f"secret-{n}") for n in "ab"]
HOOK_TOKEN = "T000/B000/hook-secret-xyz"


class Receiver:
    """A webhook endpoint that records every notice; it can fail the first few deliveries."""

    def __init__(self, failures: int = 0) -> None:
        self.notices: list[dict[str, Any]] = []
        self.posts = 0
        self.failures = failures

    async def handle(self, request: web.Request) -> web.Response:
        self.posts += 1
        if self.posts <= self.failures:
            return web.Response(status=500)
        self.notices.append(await request.json())
        return web.Response(text="ok")

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post(f"/services/{HOOK_TOKEN}", self.handle)
        return app


async def wait_for(condition: Any, within_s: float = 10.0) -> None:
    for _ in range(int(within_s / 0.02)):
        if condition():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition not reached in time")


async def post(http: aiohttp.ClientSession, replica: RunningReplica) -> int:
    async with http.post(replica.proxy_url + CHAT, json=BODY) as response:
        await response.read()
        return response.status


async def test_one_breaker_trip_two_replicas_one_notice_then_one_resolved(
    start_replica: StartReplica,
    serve_app: StartUpstream,
    shared_redis: str,
    sim: SimulatedUpstream,
    http: aiohttp.ClientSession,
) -> None:
    """Both replicas check the fleet's alerts every 50 ms: a breaker trip is one notice, the
    failed probe that reopens it none, its closing one resolved notice."""
    receiver = Receiver()
    hook = f"{await serve_app(receiver.app())}/services/{HOOK_TOKEN}"
    fields = {
        "redis_url": shared_redis,
        "alert_webhook_url": hook,
        "alert_check_interval": 0.05,
        "circuit_breaker_threshold": 1,
        "circuit_breaker_timeout": 0.3,
        "session_selection_strategy": Strategy.ROUND_ROBIN,
    }
    one, two = await start_replica(TWO, **fields), await start_replica(TWO, **fields)
    sim.force("secret-a", 503)
    while sim.attempts("secret-a") == 0:
        assert await post(http, one) == 200
    await wait_for(lambda: len(receiver.notices) == 1)
    await asyncio.sleep(0.6)  # many checks by both replicas; the breaker half-opens meanwhile
    while sim.attempts("secret-a") < 2:  # the probe fails: open again, the same occurrence
        assert await post(http, two) == 200
    await asyncio.sleep(0.6)
    assert len(receiver.notices) == 1
    sim.unforce("secret-a")
    while (await one.replica.admin.session("a")).breaker != "closed":
        assert await post(http, two) == 200
        await asyncio.sleep(0.05)
    await wait_for(lambda: len(receiver.notices) == 2)
    await asyncio.sleep(0.5)
    assert [(n["alert"], n["status"]) for n in receiver.notices] == [
        ("breaker:a", "firing"),
        ("breaker:a", "resolved"),
    ]
    firing = receiver.notices[0]
    assert "circuit breaker open for session a" in firing["text"]
    assert (firing["pool"], firing["session"], firing["kind"]) == ("default", "a", "breaker")
    sent = [
        r.replica.metrics.registry.get_sample_value(
            "session_broker_alerts_sent_total", {"alert": "breaker", "status": status}
        )
        or 0
        for r in (one, two)
        for status in ("firing", "resolved")
    ]
    assert sum(sent) == 2
    for notice in receiver.notices:
        assert all(s.secret not in str(notice) for s in TWO)


async def test_failed_delivery_is_retried_in_the_background(
    start_replica: StartReplica,
    serve_app: StartUpstream,
    sim: SimulatedUpstream,
    http: aiohttp.ClientSession,
) -> None:
    """A webhook answering 500 gets the notice again a moment later; the request that caused
    the alert was answered at once all the same."""
    receiver = Receiver(failures=1)
    hook = f"{await serve_app(receiver.app())}/services/{HOOK_TOKEN}"
    replica = await start_replica(
        TWO, alert_webhook_url=hook, session_selection_strategy=Strategy.ROUND_ROBIN
    )
    sim.force("secret-b", 401)
    while sim.attempts("secret-b") == 0:
        assert await post(http, replica) == 200
    await wait_for(lambda: len(receiver.notices) == 1)
    assert receiver.posts == 2
    notice = receiver.notices[0]
    assert (notice["alert"], notice["status"]) == ("auth:b", "firing")
    assert "refused its credential" in notice["text"]
    registry = replica.replica.metrics.registry
    assert registry.get_sample_value("session_broker_webhook_failures_total") == 1
