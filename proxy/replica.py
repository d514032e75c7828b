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

from broker import ConfigError, Pool, Session
from proxy.leasing import Leasing
from proxy.settings import Settings

log = structlog.get_logger(__name__)

#: Most attempts per request when RETRY_COUNT is not set: the pool size, at most this.
DEFAULT_MAX_ATTEMPTS = 10
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
        self._leasing: Leasing | None = None
        self._client: aiohttp.ClientSession | None = None
        self._sync_task: asyncio.Task[None] | None = None

    @property
    def leasing(self) -> Leasing:
        assert self._leasing is not None, "replica not started"
        return self._leasing

    @property
    def pool(self) -> Pool:
        """The shared pool."""
        return self.leasing.pool

    @property
    def client(self) -> aiohttp.ClientSession:
        assert self._client is not None, "replica not started"
        return self._client

    async def start(self) -> None:
        self._leasing = Leasing(
            self.settings.broker(),
            self.sessions,
            queue_max=self.settings.queue_max,
            failure_mode=self.settings.redis_failure_mode,
        )
        self._leasing.start()
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
        """Write this replica's sessions into the store; if it is unreachable, the store's
        outage handling takes over and syncs them once it answers (see proxy.leasing)."""
        await self.leasing.sync()
        log.info("sessions synced", pool=self.pool.name, sessions=len(self.sessions))
        self.synced.set()

    async def close(self) -> None:
        if self._sync_task is not None:
            self._sync_task.cancel()
            await asyncio.gather(self._sync_task, return_exceptions=True)
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
        if self._client is not None:
            await self._client.close()
        if self._leasing is not None:
            await self._leasing.close()

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
        """Serving: not draining, and the store answering with the sessions synced -- or, with
        REDIS_FAILURE_MODE=open, serving from the local pool while it does not."""
        if self.draining or self._leasing is None:
            return False
        serving_locally = self.settings.redis_failure_mode == "open"
        if not self.leasing.store_up:
            return serving_locally
        if not self.synced.is_set():
            return False
        try:
            await asyncio.wait_for(self.leasing.store.ping(), READY_PING_TIMEOUT_S)
        except (TimeoutError, OSError, RedisError) as exc:
            self.leasing.mark_down(exc)
            return serving_locally
        return True


REPLICA = web.AppKey("replica", Replica)
