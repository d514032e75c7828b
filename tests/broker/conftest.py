"""Fixtures of the broker tests: every test that takes ``store`` runs on fakeredis and on a real
Redis, each time with an empty database, and builds its pools with ``make_pool``."""

from __future__ import annotations

import asyncio
import contextlib
import random
import sys
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fakeredis
import pytest
from redis.asyncio import Redis

from broker import BrokerSettings, Pool, Session, open_store

#: The backends every ``store`` test runs on. A test needing other OS processes to share its store
#: narrows this with ``@pytest.mark.parametrize("backend", [pytest.param("redis", id="redis")])``.
BACKENDS = [pytest.param("fakeredis", id="fakeredis"), pytest.param("redis", id="redis")]

#: A broker client in another OS process (not a test module; see its docstring).
WORKER = Path(__file__).with_name("worker.py")
#: Runs a test on the real Redis only (a race across processes needs a server they share).
REAL_REDIS_ONLY = pytest.mark.parametrize("backend", [pytest.param("redis", id="redis")])

MakePool = Callable[..., Coroutine[Any, Any, Pool]]
MakeSessions = Callable[..., list[Session]]
StoreClock = Callable[[], Coroutine[Any, Any, int]]


@dataclass
class Store:
    """One backend with a clean database: a URL for real Redis, a private FakeServer otherwise."""

    url: str | None
    fake_server: fakeredis.FakeServer | None

    def connect(self, settings: BrokerSettings) -> Redis:
        """A new client of this store, as a replica configured by ``settings`` would have."""
        if self.fake_server is None:
            return open_store(settings)
        # open_store would make a fresh FakeServer per client; replicas of a test must share one.
        client: Redis = fakeredis.FakeAsyncRedis(server=self.fake_server, decode_responses=True)
        return client


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """The backend's name: ``fakeredis`` or ``redis``."""
    name: str = request.param
    return name


@pytest.fixture
async def store(backend: str, request: pytest.FixtureRequest) -> AsyncIterator[Store]:
    """The test's store: a fresh FakeServer, or the real Redis flushed before and after."""
    if backend == "fakeredis":
        yield Store(url=None, fake_server=fakeredis.FakeServer())
        return
    url: str = request.getfixturevalue("redis_server")
    client = Redis.from_url(url)
    await client.flushdb()
    try:
        yield Store(url=url, fake_server=None)
    finally:
        await client.flushdb()
        await client.aclose()


@pytest.fixture
async def redis(store: Store) -> AsyncIterator[Redis]:
    """A plain client of the test's store, for looking at keys and for test-only counters."""
    client = store.connect(BrokerSettings(redis_url=store.url))
    yield client
    await client.aclose()


@pytest.fixture
def store_now_ms(redis: Redis) -> StoreClock:
    """``await store_now_ms()``: the store's clock in ms, the one scripts use (not ours)."""

    async def now() -> int:
        seconds, microseconds = await redis.time()
        return int(seconds) * 1000 + int(microseconds) // 1000

    return now


@pytest.fixture
def store_reaches(store_now_ms: StoreClock) -> Callable[[int], Coroutine[Any, Any, None]]:
    """``await store_reaches(ms)``: sleep until the store's clock passes ``ms`` (5 s at most)."""

    async def wait(deadline_ms: int) -> None:
        for _ in range(250):
            if await store_now_ms() > deadline_ms:
                return
            await asyncio.sleep(0.02)
        pytest.fail("the store's clock never reached the deadline")

    return wait


@pytest.fixture
async def make_pool(store: Store) -> AsyncIterator[MakePool]:
    """``await make_pool(sessions, **settings)``: a Pool on its own client of the test's store.

    Each call is another replica; ``sessions`` (when given) is synced first. Clients are closed
    after the test.
    """
    clients: list[Redis] = []

    async def make(
        sessions: Sequence[Session] | None = None, *, name: str | None = None, **overrides: Any
    ) -> Pool:
        settings = BrokerSettings(redis_url=store.url, **overrides)
        client = store.connect(settings)
        clients.append(client)
        pool = Pool(client, settings, name=name)
        if sessions is not None:
            await pool.sync(sessions)
        return pool

    yield make
    for client in clients:
        await client.aclose()


@pytest.fixture
def make_sessions() -> MakeSessions:
    """``make_sessions(n, **fields)``: sessions ``s0``..``s<n-1>`` with secrets ``secret-<i>``."""

    def make(count: int, **fields: Any) -> list[Session]:
        return [Session(id=f"s{i}", secret=f"secret-{i}", **fields) for i in range(count)]

    return make


@pytest.fixture
def seeded_random() -> Iterator[None]:
    """Seeds the global ``random`` that Pool.acquire draws from, and restores its state after."""
    state = random.getstate()
    random.seed(20240611)
    yield
    random.setstate(state)


@contextlib.asynccontextmanager
async def ready_workers(
    *args: str, count: int = 2
) -> AsyncIterator[list[asyncio.subprocess.Process]]:
    """``count`` processes of ``worker.py ARGS``, each having printed ``ready`` (they then wait
    for ``go_all``, so that they start together); any still running at the end is killed."""
    processes = [
        await asyncio.create_subprocess_exec(
            sys.executable, str(WORKER), *args,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        )
        for _ in range(count)
    ]  # fmt: skip
    try:
        for process in processes:
            assert process.stdout is not None
            assert await asyncio.wait_for(process.stdout.readline(), 30) == b"ready\n"
        yield processes
    finally:
        for process in processes:
            if process.returncode is None:
                process.kill()
                await process.wait()


async def go_all(processes: Sequence[asyncio.subprocess.Process], timeout_s: float) -> list[bytes]:
    """Start every ready worker at once; what each printed, once all have finished."""
    outputs = await asyncio.wait_for(
        asyncio.gather(*(process.communicate(b"go\n") for process in processes)), timeout_s
    )
    return [stdout for stdout, _ in outputs]
