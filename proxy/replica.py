"""A replica: what one proxy process holds. Its store client, its pool, its secrets (never sent
anywhere but the upstream), its pooled upstream client, and its lifecycle (synced, draining,
requests in flight)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Coroutine
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import structlog
from aiohttp import web
from redis.exceptions import RedisError

from broker import ConfigError, Pool, Session, StoreError, open_store
from broker.admin import Census, PoolAdmin
from broker.constants import OPS_SET_LIMIT
from broker.store import Store
from proxy.logs import REDACTOR
from proxy.metrics import Metrics
from proxy.settings import Settings
from proxy.watch import ObservedPool, Watch, replica_id

log = structlog.get_logger(__name__)

#: Most attempts per request when RETRY_COUNT is not set: the pool size, at most this.
DEFAULT_MAX_ATTEMPTS = 10
#: Wait between attempts to write the sessions into an unreachable store at start-up (seconds).
SYNC_RETRY_S = (0.2, 0.5, 1.0, 2.0, 5.0)
#: How long /readyz waits for the store's PONG.
READY_PING_TIMEOUT_S = 1.0


class Replica:
    """State and resources of one proxy process, shared by its proxy and ops apps."""

    def __init__(self, settings: Settings, sessions: list[Session]) -> None:
        if settings.upstream_url is None:
            raise ConfigError("UPSTREAM_URL is not set; give the upstream's base URL")
        self.settings = settings
        self.upstream_url = settings.upstream_url.rstrip("/")
        self.sessions = sessions
        self.secrets = {s.id: s.secret for s in sessions}
        self.header_families = settings.header_families
        self.max_attempts = settings.retry_count or min(len(sessions), DEFAULT_MAX_ATTEMPTS)
        self.draining = False
        self.synced = asyncio.Event()
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._background: set[asyncio.Task[Any]] = set()
        self.store: Store | None = None
        self._pool: Pool | None = None
        self._client: aiohttp.ClientSession | None = None
        self._sync_task: asyncio.Task[None] | None = None
        # Operations (issue 6): secrets kept out of every log line, metrics, the fleet watch.
        REDACTOR.add([*self.secrets.values(), *settings.secret_values])
        self.id = replica_id()
        self.metrics = Metrics(settings.metrics_prefix, census=self._census)
        self.watch = Watch(self)
        self._admin: PoolAdmin | None = None

    @property
    def pool(self) -> Pool:
        assert self._pool is not None, "replica not started"
        return self._pool

    @property
    def client(self) -> aiohttp.ClientSession:
        assert self._client is not None, "replica not started"
        return self._client

    async def start(self) -> None:
        self.store = open_store(self.settings.broker())
        self._pool = ObservedPool(
            self.store, self.settings.broker(), listener=self.watch.on_transitions
        )
        self._admin = PoolAdmin(self._pool)
        self.watch.start()
        timeout = aiohttp.ClientTimeout(
            total=None,
            sock_connect=self.settings.upstream_connect_timeout,
            sock_read=self.settings.upstream_read_timeout,
        )
        self._client = aiohttp.ClientSession(
            timeout=timeout,
            auto_decompress=False,  # bytes pass through as the upstream encoded them
            connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=30),
            cookie_jar=aiohttp.DummyCookieJar(),  # never keep one client's cookies for another
            # Send what the client sent: an Accept-Encoding added here would get the client a
            # compressed body it never asked for.
            skip_auto_headers=("Accept", "Accept-Encoding", "User-Agent"),
        )
        self._sync_task = asyncio.create_task(self._sync())

    async def _sync(self) -> None:
        attempt = 0
        while True:
            try:
                size = await self.pool.sync(self.sessions)
            except StoreError as exc:  # anything else is a bug: it propagates to close()
                delay = SYNC_RETRY_S[min(attempt, len(SYNC_RETRY_S) - 1)]
                attempt += 1
                log.warning("store unreachable at start-up; retrying", error=str(exc), in_s=delay)
                await asyncio.sleep(delay)
                continue
            log.info("sessions synced", pool=self.pool.name, sessions=size)
            self.synced.set()
            return

    @property
    def admin(self) -> PoolAdmin:
        assert self._admin is not None, "replica not started"
        return self._admin

    async def _census(self) -> Census:
        return await self.admin.census(limit=OPS_SET_LIMIT)

    async def close(self) -> None:
        await self.watch.close()
        if self._sync_task is not None:
            self._sync_task.cancel()
            await asyncio.gather(self._sync_task, return_exceptions=True)
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
        if self._client is not None:
            await self._client.close()
        if self.store is not None:
            await self.store.aclose()

    def spawn(self, work: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Run ``work`` in the background; close() waits for it (lease releases must land)."""
        task = asyncio.create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    @asynccontextmanager
    async def tracking(self) -> AsyncIterator[None]:
        """Count a request in flight for the duration of the block."""
        self._in_flight += 1
        self._idle.clear()
        try:
            yield
        finally:
            self._in_flight -= 1
            if self._in_flight == 0:
                self._idle.set()

    async def wait_idle(self, timeout_s: float) -> bool:
        """Wait until no request is in flight; False when ``timeout_s`` passed first."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
        except TimeoutError:
            return False
        return True

    async def ready(self) -> bool:
        """Serving: sessions synced, the store answering, not draining."""
        if self.draining or not self.synced.is_set() or self.store is None:
            return False
        try:
            return bool(await asyncio.wait_for(self.store.ping(), READY_PING_TIMEOUT_S))
        except (TimeoutError, OSError, RedisError) as exc:
            log.debug("store ping failed", error=type(exc).__name__)
            return False


REPLICA = web.AppKey("replica", Replica)
