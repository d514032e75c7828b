"""Usage reported at release: the units an answer consumed, from its JSON body, its last
event-stream event with usage, or a configured header, charged to the session's unit count."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from typing import TYPE_CHECKING

import aiohttp
import pytest
from aiohttp import web

from broker import Session
from proxy.request.estimate import estimate_units
from proxy.request.usage import SSE_TAIL_BYTES, UsageMeter
from proxy.testing import Limits, SimulatedUpstream

if TYPE_CHECKING:
    from proxy.serve import RunningReplica
    from tests.proxy.conftest import StartReplica, StartUpstream

JSON = {"Content-Type": "application/json"}
SSE = {"Content-Type": "text/event-stream"}


def metered(headers: dict[str, str], *chunks: bytes, header_name: str = "") -> int | None:
    meter = UsageMeter(headers, header_name)
    for chunk in chunks:
        meter.feed(chunk)
    return meter.units()


def test_json_total_tokens() -> None:
    """A JSON answer's usage.total_tokens, even when it arrives in pieces."""
    body = json.dumps({"id": "x", "usage": {"prompt_tokens": 3, "total_tokens": 42}}).encode()
    assert metered(JSON, body[:10], body[10:]) == 42


def test_json_input_plus_output_tokens() -> None:
    """Without a total, input plus output tokens (Anthropic's shape)."""
    body = json.dumps({"usage": {"input_tokens": 10, "output_tokens": 5}}).encode()
    assert metered({"Content-Type": "application/json; charset=utf-8"}, body) == 15


@pytest.mark.parametrize(
    "body",
    [
        b'{"usage": {"total_tokens": -1}}',
        b'{"usage": {"total_tokens": true}}',
        b'{"usage": "many"}',
        b'{"no": "usage"}',
        b"not json",
        b"[1, 2]",
    ],
)
def test_json_without_usable_usage(body: bytes) -> None:
    """Nothing usable reported: None, never a guess."""
    assert metered(JSON, body) is None


def test_sse_last_event_with_usage() -> None:
    """An event stream's usage comes from its last event carrying one; [DONE] is skipped."""
    events = [
        b'data: {"choices": [{"delta": {"content": "hi"}}], "usage": null}\n\n',
        b'data: {"choices": [], "usage": {"total_tokens": 7}}\n\n',
        b"data: [DONE]\n\n",
    ]
    assert metered(SSE, *events) == 7


def test_sse_keeps_only_its_tail() -> None:
    """A long stream keeps only its last bytes, which hold the final usage."""
    filler = b'data: {"choices": [{"delta": {"content": "' + b"x" * 1000 + b'"}}]}\n\n'
    chunks = [filler] * (2 * SSE_TAIL_BYTES // len(filler))
    last = b'data: {"usage": {"total_tokens": 9000}}\r\n\r\n'
    meter = UsageMeter(SSE)
    for chunk in [*chunks, last]:
        meter.feed(chunk)
    assert meter.units() == 9000
    assert len(meter._body) <= SSE_TAIL_BYTES


def test_header_wins_and_compressed_bodies_are_not_read() -> None:
    """A configured header is taken as it is; a compressed body reports nothing."""
    body = b'{"usage": {"total_tokens": 5}}'
    assert metered({**JSON, "X-Usage": "77"}, body, header_name="X-Usage") == 77
    assert metered({**JSON, "Content-Encoding": "gzip"}, body) is None
    assert metered({"Content-Type": "text/plain"}, body) is None


def usage_upstream() -> web.Application:
    """An upstream that answers with usage: JSON at /json, an event stream at /stream, a
    header at /header."""

    async def as_json(request: web.Request) -> web.Response:
        return web.json_response({"usage": {"total_tokens": 120}})

    async def as_stream(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers=SSE)
        await response.prepare(request)
        await response.write(b'data: {"choices": [{"delta": {"content": "a"}}]}\n\n')
        await response.write(b'data: {"choices": [], "usage": {"total_tokens": 30}}\n\n')
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    async def as_header(request: web.Request) -> web.Response:
        return web.Response(text="ok", headers={"X-Usage-Tokens": "55"})

    app = web.Application()
    app.router.add_post("/json", as_json)
    app.router.add_post("/stream", as_stream)
    app.router.add_post("/header", as_header)
    return app


async def units_of(replica: RunningReplica, session_id: str, expected: int) -> int:
    """The session's unit count once the background release has landed (or after 5 s)."""
    units = 0
    for _ in range(250):
        state = await replica.replica.pool.session_state(session_id)
        units = int(state.get("units", "0"))
        if units >= expected:
            return units
        await asyncio.sleep(0.02)
    return units


async def test_proxy_reports_usage_at_release(
    start_replica: StartReplica, serve_app: StartUpstream, http: aiohttp.ClientSession
) -> None:
    """JSON, event-stream and header usage each reach the session's unit count, once."""
    url = await serve_app(usage_upstream())
    sessions = [Session(id="a", secret="secret-a", tpm=1_000_000)]
    replica = await start_replica(sessions, upstream_url=url, usage_header="X-Usage-Tokens")
    for path in ("/json", "/stream", "/header"):
        async with http.post(f"{replica.proxy_url}{path}", data=b"{}") as response:
            assert response.status == 200
            await response.read()
    assert await units_of(replica, "a", 205) == 120 + 30 + 55


@pytest.mark.slow
async def test_two_replicas_at_twice_the_token_budget_never_meet_a_token_429(
    start_replica: StartReplica, serve_app: StartUpstream, shared_redis: str
) -> None:
    """An upstream enforcing each key's tpm, driven through two replicas at twice the budget:
    the pre-charge (the request's max_tokens plus its size / 4) keeps every request inside the
    budget, fleet-wide, and the budget is used to within 10%."""
    tpm = 3000
    # Answers take a while, so many requests are in flight at once: units reported only at
    # release would let them all in, past the upstream's budget.
    limits = {f"secret-{i}": Limits(tpm=tpm) for i in "ab"}
    sim = SimulatedUpstream(limits=limits, latency_s=0.3)
    url = await serve_app(sim.app())
    sessions = [Session(id=i, secret=f"secret-{i}", tpm=tpm) for i in "ab"]
    replicas = [
        await start_replica(sessions, upstream_url=url, redis_url=shared_redis) for _ in range(2)
    ]
    body = json.dumps({"model": "m", "max_tokens": 80, "messages": [{"content": "hi"}]}).encode()
    cost = estimate_units(body)
    seconds = 6.0
    # A key may start a minute ahead (the budget's burst), then refills at tpm / 60 per second.
    budget = 2 * tpm * (60 + seconds) / 60
    rate = 2 * budget / cost / seconds
    statuses: Counter[int] = Counter()

    async def one(http: aiohttp.ClientSession, target: str) -> None:
        async with http.post(f"{target}/v1/chat/completions", data=body) as response:
            await response.read()
            statuses[response.status] += 1

    loop = asyncio.get_running_loop()
    started = loop.time()
    async with aiohttp.ClientSession() as http:
        tasks = []
        for n in range(round(rate * seconds)):
            await asyncio.sleep(max(0.0, started + n / rate - loop.time()))
            target = replicas[n % 2].proxy_url
            tasks.append(asyncio.create_task(one(http, target)))
        await asyncio.gather(*tasks)
    elapsed = loop.time() - started
    stats = sim.snapshot()
    token_429s = sum(stats[f"secret-{i}"]["limited"]["tpm"] for i in "ab")  # type: ignore[index]
    used = sum(int(stats[f"secret-{i}"]["units"]) for i in "ab")  # type: ignore[call-overload]
    allowed = 2 * tpm * (60 + elapsed) / 60
    assert token_429s == 0
    assert statuses[200] > 0
    assert set(statuses) <= {200, 429}
    # Within 10% either way: a key's last admission may overdraw it by one request's units.
    assert abs(used - allowed) <= 0.1 * allowed, (used, allowed, statuses)
