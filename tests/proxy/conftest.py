"""Fixtures for end-to-end proxy tests: a real aiohttp upstream, real replicas on real sockets,
and (where a test needs two replicas to share state) the real Redis of tests/conftest.py."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest
import redis
import redis.asyncio
from aiohttp import web

from broker import Session
from proxy.config.pools import load_pools
from proxy.config.settings import Settings
from proxy.replica.replica import Replica
from proxy.serve import RunningReplica, start
from proxy.testing import SimulatedUpstream

SESSIONS = [Session(id=name, secret=f"secret-{name}") for name in ("a", "b", "c")]
#: Two tiers and two unit budgets: a and b in tier 1 (a with a tpm), c in tier 0 with a tpm.
TIERED = [
    Session(id="a", secret="secret-a", priority=1, tpm=60_000),
    Session(id="b", secret="secret-b", priority=1),
    Session(id="c", secret="secret-c", tpm=30_000),
]

#: An ACL user of the test Redis (see ``acl_user``), and its password.
ACL_USER, ACL_PASSWORD = "proxy-test", "the-right-password"

StartUpstream = Callable[[web.Application], Awaitable[str]]
StartReplica = Callable[..., Awaitable[RunningReplica]]


@pytest.fixture
async def serve_app() -> AsyncIterator[StartUpstream]:
    """Start any aiohttp app on a free port; yields a function returning its base URL."""
    runners: list[web.AppRunner] = []

    async def serve(app: web.Application) -> str:
        # handler_cancellation: an upstream handler notices when the proxy hangs up on it.
        runner = web.AppRunner(
            app, access_log=None, shutdown_timeout=0.5, handler_cancellation=True
        )
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        runners.append(runner)
        return f"http://127.0.0.1:{runner.addresses[0][1]}"

    yield serve
    for runner in runners:
        await runner.cleanup()


class GatedStream:
    """An upstream that sends one event, then waits for the test to open the gate."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.finished = asyncio.Event()
        self.disconnected = asyncio.Event()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        try:
            await response.write(b"data: first\n\n")
            await self.gate.wait()
            await response.write(b"data: last\n\n")
            await response.write_eof()
        except (ConnectionResetError, asyncio.CancelledError):
            self.disconnected.set()
            raise
        self.finished.set()
        return response

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/stream", self.handle)
        return app


@pytest.fixture
def upstream() -> GatedStream:
    """A streaming upstream the test controls: one event, then the rest when the gate opens."""
    return GatedStream()


@pytest.fixture
def sim() -> SimulatedUpstream:
    return SimulatedUpstream()


@pytest.fixture
async def upstream_url(sim: SimulatedUpstream, serve_app: StartUpstream) -> str:
    return await serve_app(sim.app())


@pytest.fixture
async def shared_redis(redis_server: str) -> AsyncIterator[str]:
    """The real Redis, emptied for this test: replicas given this URL share one pool."""
    client = redis.asyncio.Redis.from_url(redis_server)
    await client.flushall()
    await client.aclose()
    return redis_server


@pytest.fixture
def acl_user(redis_server: str) -> Iterator[str]:
    """A REDIS_URL of the test Redis as ACL user ACL_USER, with ``{password}`` to fill in; the
    user may do anything, with the password ACL_PASSWORD, until the test ends."""
    client = redis.Redis.from_url(redis_server)
    client.acl_setuser(
        ACL_USER, enabled=True, passwords=[f"+{ACL_PASSWORD}"], keys=["*"], channels=["*"],
        commands=["+@all"],
    )  # fmt: skip
    url = urlsplit(redis_server)
    try:
        yield f"redis://{ACL_USER}:{{password}}@{url.hostname}:{url.port}/0"
    finally:
        client.acl_deluser(ACL_USER)
        client.close()


@pytest.fixture
async def start_replica(upstream_url: str) -> AsyncIterator[StartReplica]:
    """Start a replica (proxy + ops on free ports); extra keywords are Settings fields."""
    running: list[RunningReplica] = []

    async def start_one(
        sessions: Sequence[Session] | None = SESSIONS,
        before_start: Callable[[Replica], None] | None = None,
        **overrides: Any,
    ) -> RunningReplica:
        """``sessions=None``: the pools of the ``sessions_file`` override. ``before_start`` is
        given the replica before it starts (to hand it a part of the test's own)."""
        fields: dict[str, Any] = {
            "upstream_url": upstream_url,
            "listen": "127.0.0.1:0",
            "admin_listen": "127.0.0.1:0",
            "shutdown_grace": 2.0,
            "exponential_backoff_enabled": False,
        }
        settings = Settings(**(fields | overrides))
        pools = load_pools(settings) if sessions is None else list(sessions)
        made = Replica(settings, pools)
        if before_start is not None:
            before_start(made)
        replica = await start(made)
        running.append(replica)
        await asyncio.wait_for(replica.replica.synced.wait(), 10)
        return replica

    yield start_one
    for replica in running:
        await replica.stop()


async def store_now_ms(url: str) -> int:
    """The store's clock in ms (the one the scripts use), read from the Redis at ``url``."""
    client = redis.asyncio.Redis.from_url(url)
    try:
        seconds, microseconds = await client.time()
    finally:
        await client.aclose()
    return int(seconds) * 1000 + int(microseconds) // 1000


async def wait_ready(
    http: aiohttp.ClientSession, url: str, process: asyncio.subprocess.Process | None = None
) -> None:
    """Wait until ``url`` answers 200 (a process started for a test is ready); fail at once if
    ``process`` exits first, and after about 15 s."""
    for _ in range(300):
        if process is not None and process.returncode is not None:
            pytest.fail(f"the process behind {url} exited with {process.returncode}")
        try:
            async with http.get(url) as response:
                if response.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.05)
    pytest.fail(f"{url} never became ready")


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session
