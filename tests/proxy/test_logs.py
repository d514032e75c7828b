"""Logs: a real replica process at DEBUG never writes a secret, in any line from any logger; the
events an operator needs are there; the health summary is written by one replica at a time."""

from __future__ import annotations

import asyncio
import io
import itertools
import json
import os
import shutil
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
import pytest
import redis.asyncio
import structlog
from aiohttp import web
from structlog.testing import capture_logs

from broker import Strategy
from proxy.config.settings import HELP
from proxy.telemetry.logs import REDACTED, Redactor, configure_logging
from proxy.testing import SimulatedUpstream, free_port
from tests.proxy.conftest import wait_ready

if TYPE_CHECKING:
    from tests.proxy.conftest import StartReplica, StartUpstream

CHAT = "/v1/chat/completions"
BODY = {"model": "m", "messages": []}
# One secret per kind the process holds; one with characters that JSON and repr escape.
SECRETS = {
    "a": "sk-alpha-0c1f5e9d",
    "b": 'sk-"quoted\\beta-77f2',
    "c": "sk-gamma-auth-4b1e",
    "d": "sk-delta-down-9a0c",
}
API_KEY = "client-key-5e8b0d2f"
ADMIN_TOKEN = "admin-token-aa51c7e2f9"
REDIS_PASSWORD = "redis-pw-63d9e1"
HOOK_PATH = "/hooks/T0/B0/hook-secret-e41d"


def test_redactor_replaces_every_form() -> None:
    """Raw, JSON-escaped and repr-escaped forms are replaced; values of any type are walked."""
    redactor = Redactor()
    redactor.add(["abc-secret", 'q"uote', None, ""])
    event = {
        "event": "x abc-secret y",
        "nested": {"list": ["abc-secret", 1]},
        "e": KeyError('q"uote'),
    }
    cleaned = redactor.value(event)
    assert "abc-secret" not in repr(cleaned)
    assert 'q"uote' not in repr(cleaned)
    assert cleaned["nested"]["list"] == [REDACTED, 1]
    assert redactor.text(json.dumps({"k": 'q"uote'})) == json.dumps({"k": REDACTED})
    assert redactor.text(repr('q"uote')) == f"'{REDACTED}'"


def test_configured_logging_redacts_structlog_and_stdlib_lines() -> None:
    """Through the configured processors, structlog and standard-library loggers alike."""
    import logging

    from proxy.telemetry.logs import REDACTOR

    REDACTOR.add(["tok-0000-unit-test"])
    out = io.StringIO()
    configure_logging("debug", "json", stream=out, cache=False)
    try:
        structlog.get_logger("t").debug("hello", detail="tok-0000-unit-test")
        logging.getLogger("aiohttp.server").error("boom with tok-0000-unit-test")
        try:
            raise ValueError("tok-0000-unit-test")
        except ValueError:
            structlog.get_logger("t").exception("failed")
    finally:
        structlog.reset_defaults()
        logging.getLogger().handlers.clear()
    lines = out.getvalue().splitlines()
    assert len(lines) == 3
    assert all(json.loads(line) for line in lines)
    assert "tok-0000-unit-test" not in out.getvalue()
    assert out.getvalue().count(REDACTED) >= 3


class Hook:
    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []

    async def handle(self, request: web.Request) -> web.Response:
        self.bodies.append(await request.json())
        return web.Response(text="ok")

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post(HOOK_PATH, self.handle)
        return app


@pytest.mark.slow
async def test_a_replica_at_debug_writes_no_secret(
    serve_app: StartUpstream, shared_redis: str, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    """Traffic with 429s, a 401, a breaker trip, alerts, admin calls with right and wrong tokens,
    a scrape and a health summary through a real `serve` process at DEBUG: every line is JSON,
    the expected events are there, and none of the secrets appears anywhere."""
    sim = SimulatedUpstream()
    sim.force(SECRETS["b"], 429, {"Retry-After": "60"})
    sim.force(SECRETS["c"], 401)
    sim.force(SECRETS["d"], 500)
    upstream = await serve_app(sim.app())
    hook = Hook()
    hook_url = await serve_app(hook.app()) + HOOK_PATH
    admin = redis.asyncio.Redis.from_url(shared_redis)
    await admin.execute_command(
        "ACL", "SETUSER", "broker", "on", f">{REDIS_PASSWORD}", "~*", "&*", "+@all"
    )
    await admin.aclose()
    host_port = shared_redis.removeprefix("redis://").split("/")[0]
    sessions = tmp_path / "sessions.json"
    sessions.write_text(
        json.dumps({"sessions": [{"id": k, "secret": v} for k, v in SECRETS.items()]})
    )
    listen, ops = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if k not in HELP} | {
        "UPSTREAM_URL": upstream,
        "SESSIONS_FILE": str(sessions),
        "REDIS_URL": f"redis://broker:{REDIS_PASSWORD}@{host_port}/0",
        "LISTEN": f"127.0.0.1:{listen}",
        "ADMIN_LISTEN": f"127.0.0.1:{ops}",
        "PROXY_API_KEYS": f"other-key-1,{API_KEY}",
        "ADMIN_TOKEN": ADMIN_TOKEN,
        "ALERT_WEBHOOK_URL": hook_url,
        "ALERT_CHECK_INTERVAL": "0.2",
        "HEALTH_CHECK_INTERVAL": "1",
        "CIRCUIT_BREAKER_THRESHOLD": "1",
        "SESSION_SELECTION_STRATEGY": Strategy.ROUND_ROBIN.value,
        "LOG_LEVEL": "debug",
        "LOG_FORMAT": "json",
        "SHUTDOWN_GRACE": "2",
    }
    command = shutil.which("session-broker")
    argv = [command, "serve"] if command else [sys.executable, "-m", "proxy", "serve"]
    log_path = tmp_path / "replica.log"
    with log_path.open("wb") as log_file:
        process = await asyncio.create_subprocess_exec(
            *argv, env=env, stdout=log_file, stderr=log_file, stdin=asyncio.subprocess.DEVNULL
        )
    try:
        base, ops_url = f"http://127.0.0.1:{listen}", f"http://127.0.0.1:{ops}"
        await wait_ready(http, f"{ops_url}/readyz", process)
        answers: list[str] = []
        for headers in (
            {"Authorization": f"Bearer {API_KEY}"},
            {"X-Api-Key": API_KEY},
            {"Authorization": "Bearer wrong-key"},
        ):
            for _ in range(3):
                async with http.post(base + CHAT, json=BODY, headers=headers) as response:
                    answers.append(await response.text())
        for token in (ADMIN_TOKEN, "wrong-token"):
            for path in ("/admin/sessions", "/admin/pool"):
                headers = {"Authorization": f"Bearer {token}"}
                async with http.get(ops_url + path, headers=headers) as response:
                    answers.append(await response.text())
        # A client can put anything into X-Request-ID, which is on every line of its request:
        # here secrets, which the redaction must catch on their way into the log.
        for leaked in (API_KEY, SECRETS["a"]):
            headers = {"X-Api-Key": API_KEY, "X-Request-ID": leaked}
            async with http.post(base + CHAT, json=BODY, headers=headers) as response:
                answers.append(await response.text())
        async with http.get(f"{ops_url}/metrics") as response:
            answers.append(await response.text())
        for _ in range(200):
            if "session health" in log_path.read_text() and len(hook.bodies) >= 2:
                break
            await asyncio.sleep(0.05)
    finally:
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 20) == 0
    text = log_path.read_text()
    events = [json.loads(line) for line in text.splitlines()]
    names = {e["event"] for e in events}
    expected = {
        "session selected", "session rate limited", "session cooling down", "session disabled",
        "circuit breaker open", "attempt failed", "health summary", "session health", "alert",
        "admin request with a wrong token", "stopped",
    }  # fmt: skip
    assert expected <= names, expected - names
    assert {e["level"] for e in events} >= {"debug", "info", "warning"}
    assert any(e.get("request_id") == REDACTED for e in events)
    everything = [text, *answers, *(json.dumps(b) for b in hook.bodies)]
    forbidden = [*SECRETS.values(), API_KEY, ADMIN_TOKEN, REDIS_PASSWORD, HOOK_PATH]
    escaped = [json.dumps(s)[1:-1] for s in forbidden]
    for output in everything:
        for secret in {*forbidden, *escaped}:
            assert secret not in output, secret


async def test_health_summary_is_written_by_one_replica_per_turn(
    start_replica: StartReplica, shared_redis: str, http: aiohttp.ClientSession
) -> None:
    """Two replicas checking every 50 ms with a 0.5 s interval: each turn's lines (one for the
    pool, one per session) come from one replica, and turns are at least the interval apart."""
    fields = {"redis_url": shared_redis, "health_check_interval": 1, "alert_check_interval": 0.05}
    with capture_logs() as logs:
        one = await start_replica(**fields)
        two = await start_replica(**fields)
        for _ in range(150):
            if len({e["turn_at_ms"] for e in logs if e["event"] == "health summary"}) >= 2:
                break
            await asyncio.sleep(0.02)
    turns: dict[int, list[dict[str, Any]]] = {}
    for event in logs:
        if event["event"] in ("health summary", "session health"):
            turns.setdefault(event["turn_at_ms"], []).append(event)
    assert len(turns) >= 2
    for lines in turns.values():
        assert len({line["replica"] for line in lines}) == 1
        assert sorted(line.get("session", "") for line in lines) == ["", "a", "b", "c"]
    starts = sorted(turns)
    assert all(later - earlier >= 1000 for earlier, later in itertools.pairwise(starts))
    assert {one.replica.id, two.replica.id} >= {lines[0]["replica"] for lines in turns.values()}
