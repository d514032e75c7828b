"""Hostile input end to end, through real sockets: an upstream whose headers and bodies no parser
can read, request bodies nested too deep, credentials and header values that are not UTF-8. None
of it gets a 500, and every lease taken is released at once."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import TYPE_CHECKING

import aiohttp
import pytest
from aiohttp import web

from broker import Session, Strategy
from proxy.testing.upstream import SimulatedUpstream

if TYPE_CHECKING:
    from proxy.serve import RunningReplica
    from tests.proxy.conftest import StartReplica, StartUpstream

CHAT = "/v1/chat/completions"
BODY = {"model": "m", "messages": []}
TWO = [Session(id=n, secret=f"secret-{n}") for n in "ab"]
METERED = [Session(id="a", secret="secret-a", tpm=1_000_000)]
HUGE_RESETS = {
    "github": {"x-ratelimit-remaining": "0", "x-ratelimit-reset": "1e308"},
    "ietf-reset": {"ratelimit-remaining": "0", "ratelimit-reset": "1e308"},
    "ietf-structured": {"RateLimit": '"default";r=0;t=1e308'},
    "openai-go-duration": {
        "x-ratelimit-remaining-requests": "0",
        "x-ratelimit-reset-requests": "9" * 400 + "s",
    },
    "retry-after-5000-digits": {"Retry-After": "9" * 5000},
    "retry-after-ms-1e308": {"retry-after-ms": "1e308"},
}


async def live_leases(replica: RunningReplica, sessions: list[Session]) -> int:
    """The leases the pool holds now, over all its sessions."""
    states = [await replica.replica.pool.session_state(s.id) for s in sessions]
    return sum(int(state.get("in_flight", "0")) for state in states)


async def settled_leases(replica: RunningReplica, sessions: list[Session]) -> int:
    """The live lease count once the background releases have landed (or 2 s have passed)."""
    for _ in range(100):
        if await live_leases(replica, sessions) == 0:
            return 0
        await asyncio.sleep(0.02)
    return await live_leases(replica, sessions)


async def raw_exchange(url: str, request: bytes) -> bytes:
    """Send ``request`` as it is on a new connection; everything answered until it closes."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(request)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()


def status_of(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


class RawUpstream:
    """An upstream that answers every request with the same bytes, exactly as given."""

    def __init__(self, answer: bytes) -> None:
        self.answer = answer
        self.requests: list[bytes] = []

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(
            (
                int(line.split(b":", 1)[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            ),
            0,
        )
        self.requests.append(head + await reader.readexactly(length))
        writer.write(self.answer)
        await writer.drain()
        writer.close()

    async def start(self) -> tuple[str, asyncio.Server]:
        server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}", server


@pytest.mark.parametrize("headers", HUGE_RESETS.values(), ids=HUGE_RESETS.keys())
async def test_a_429_with_huge_waits_moves_on_and_releases(
    start_replica: StartReplica,
    sim: SimulatedUpstream,
    http: aiohttp.ClientSession,
    headers: dict[str, str],
) -> None:
    """A 429 whose wait overflows every number type cools its session (clamped), the next
    session serves the request, and no lease stays held."""
    sim.force("secret-a", 429, headers)
    replica = await start_replica(sessions=TWO, session_selection_strategy=Strategy.ROUND_ROBIN)
    async with http.post(replica.proxy_url + CHAT, json=BODY) as response:
        assert response.status == 200, await response.text()
    assert sim.attempts("secret-b", 200) == 1
    assert await settled_leases(replica, TWO) == 0
    assert (await replica.replica.pool.session_state("a"))["state"] == "cooling"


@pytest.mark.parametrize(
    ("content_type", "deep"),
    [
        pytest.param(
            "application/json", b'{"usage": ' + b"[" * 5000 + b"]" * 5000 + b"}", id="json"
        ),
        pytest.param(
            "text/event-stream",
            b"data: " + b"[" * 5000 + b"]" * 5000 + b"\n\ndata: [DONE]\n\n",
            id="event-stream",
        ),
    ],
)
async def test_an_answer_nested_too_deep_releases_its_lease(
    start_replica: StartReplica,
    serve_app: StartUpstream,
    http: aiohttp.ClientSession,
    content_type: str,
    deep: bytes,
) -> None:
    """A JSON answer (or an event stream's last event) nested 5,000 deep, for a session with a
    tpm: the client gets it whole, the lease is released (its pre-charge standing: the usage
    cannot be read)."""

    async def answer(request: web.Request) -> web.Response:
        return web.Response(body=deep, content_type=content_type)

    app = web.Application()
    app.router.add_post(CHAT, answer)
    replica = await start_replica(sessions=METERED, upstream_url=await serve_app(app))
    async with http.post(replica.proxy_url + CHAT, json=BODY) as response:
        assert response.status == 200
        assert await response.read() == deep
    assert await settled_leases(replica, METERED) == 0
    assert (await replica.replica.pool.session_state("a"))["n_success"] == "1"


@pytest.mark.parametrize("routing", ["model", "precharge"])
async def test_a_request_body_nested_too_deep_is_forwarded(
    start_replica: StartReplica,
    sim: SimulatedUpstream,
    http: aiohttp.ClientSession,
    tmp_path: Path,
    routing: str,
) -> None:
    """A 4 KB body nested 2,000 deep, read to route by model or to pre-charge a tpm: its model
    and max_tokens are unreadable, so it goes to the default pool, charged its size."""
    deep = b'{"messages": ' + b"[" * 2000 + b"]" * 2000 + b', "model": "gpt-4o", "max_tokens": 9}'
    if routing == "model":
        sessions_file = tmp_path / "sessions.json"
        pools = {
            "default_pool": "default",
            "pools": {
                "default": {"sessions": [{"id": "a", "secret": "secret-a"}]},
                "other": {"models": ["gpt-*"], "sessions": [{"id": "b", "secret": "secret-b"}]},
            },
        }
        sessions_file.write_text(json.dumps(pools))
        replica = await start_replica(sessions=None, sessions_file=str(sessions_file))
    else:
        replica = await start_replica(sessions=METERED)
    async with http.post(replica.proxy_url + "/echo", data=deep) as response:
        assert response.status == 200, await response.text()
        assert (await response.json())["body_bytes"] == len(deep)
    if routing == "precharge":
        assert await settled_leases(replica, METERED) == 0


@pytest.mark.parametrize(
    "credential",
    [b"Authorization: Bearer key-\xff\xfe", b"X-Api-Key: key-\xc3\x28", b"Authorization: \xff"],
)
async def test_a_credential_that_is_not_utf8_gets_401(
    start_replica: StartReplica, credential: bytes
) -> None:
    """With PROXY_API_KEYS, a key that is not UTF-8 is just a wrong key: 401, not 500."""
    replica = await start_replica(proxy_api_keys="right-key-1")
    request = b"GET /echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\n" + credential + b"\r\n\r\n"
    answer = await raw_exchange(replica.proxy_url, request)
    assert status_of(answer) == 401, answer


async def test_a_request_header_that_is_not_utf8_is_refused(
    start_replica: StartReplica, sim: SimulatedUpstream
) -> None:
    """An ordinary request header with a byte that is not UTF-8 is refused with 400 naming the
    header, never forwarded altered; no session is leased for it."""
    replica = await start_replica()
    request = b"GET /echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-Note: caf\xe9\r\n\r\n"
    answer = await raw_exchange(replica.proxy_url, request)
    assert status_of(answer) == 400, answer
    assert b"X-Note" in answer
    assert sum(sim.attempts(s.secret) for s in TWO) == 0


async def test_an_answer_header_that_is_not_utf8_is_refused(
    start_replica: StartReplica, http: aiohttp.ClientSession
) -> None:
    """An upstream answer with a header value that is not UTF-8 is not passed on altered: the
    client gets 502 naming the header, and the lease is released."""
    raw = RawUpstream(
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Note: caf\xe9\r\nConnection: close\r\n\r\nok"
    )
    url, server = await raw.start()
    try:
        replica = await start_replica(sessions=TWO, upstream_url=url)
        async with http.get(replica.proxy_url + "/echo") as response:
            assert response.status == 502
            assert "X-Note" in (await response.json())["error"]["message"]
        assert len(raw.requests) == 1  # the upstream answered: not tried again elsewhere
        assert await settled_leases(replica, TWO) == 0
    finally:
        server.close()
