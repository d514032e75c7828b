"""Where a replica gets its leases, and what it does while the store is unreachable.

Leases come from the shared pool, through its wait queue (QUEUE_TIMEOUT, QUEUE_MAX). When a call
to the store fails the replica marks the store down -- one log line -- and, until a background
probe (with backoff) finds it answering again and has re-synced the sessions -- one more line:

* ``REDIS_FAILURE_MODE=closed`` (default): requests get 503 ``store_unavailable`` at once and
  /readyz is false, so a load balancer sends traffic elsewhere;
* ``open``: the replica serves from a local pool of its own sessions, the same scripts on the
  embedded store; limits then hold per replica only. Back online it re-joins the shared state.

Leases remember the pool that granted them; their release and renewal go back there.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Collection
from contextlib import suppress
from dataclasses import replace

import structlog
from redis.exceptions import RedisError

from broker import BrokerSettings, Lease, Pool, Session, StoreError, WaitQueue, open_store
from broker.events import Transition
from broker.queue import QueueObserver
from broker.store import Store
from proxy.watch import ObservedPool

log = structlog.get_logger(__name__)

#: Waits between probes of an unreachable store (seconds); the last one repeats.
PROBE_BACKOFF_S = (0.2, 0.5, 1.0, 2.0, 5.0)
#: How long a probe waits for the store's PONG.
PROBE_TIMEOUT_S = 1.0


class Leasing:
    """The shared pool and its queue, and the local fallback of REDIS_FAILURE_MODE=open."""

    def __init__(
        self,
        settings: BrokerSettings,
        sessions: list[Session],
        *,
        queue_max: int,
        failure_mode: str,
        observe: Callable[[list[Transition]], None] | None = None,
        metrics: QueueObserver | None = None,
    ) -> None:
        self.settings = settings
        self.sessions = sessions
        self.failure_mode = failure_mode
        self.store: Store = open_store(settings)
        self.pool: Pool = (
            Pool(self.store, settings)
            if observe is None
            else ObservedPool(self.store, settings, listener=observe)
        )
        self._metrics = metrics
        self.queue = WaitQueue(self.pool, max_waiting=queue_max, observer=metrics)
        self.store_up = True
        self._local: tuple[Store, Pool, WaitQueue] | None = None
        self._queue_max = queue_max
        self._probe: asyncio.Task[None] | None = None
        self._back = asyncio.Event()
        self._waiting = False

    def start(self, *, waiting: bool) -> None:
        """``waiting``: requests may wait (QUEUE_TIMEOUT > 0), so listen for wake-ups; without
        it no pub/sub connection is opened."""
        self._waiting = waiting
        if waiting:
            self.queue.start()

    async def sync(self) -> None:
        """Write the sessions into the store; when it is unreachable, wait until the probe has
        found it again and synced them."""
        try:
            await self.pool.sync(self.sessions)
        except StoreError as exc:
            self.mark_down(exc)
            await self._back.wait()

    async def close(self) -> None:
        if self._probe is not None:
            self._probe.cancel()
            with suppress(asyncio.CancelledError):
                await self._probe
        await self.queue.close()
        await self.store.aclose()
        if self._local is not None:
            store, _, queue = self._local
            await queue.close()
            await store.aclose()

    async def lease(self, *, exclude: Collection[str], timeout_s: float) -> tuple[Lease, Pool]:
        """A lease and the pool it came from; raises NoSessionAvailable, or StoreError when the
        store is unreachable and the failure mode is closed."""
        if self.store_up:
            try:
                return await self.queue.acquire(exclude=exclude, timeout_s=timeout_s), self.pool
            except StoreError as exc:
                self.mark_down(exc)
        if self.failure_mode != "open":
            raise StoreError("the session store is unreachable")
        _, pool, queue = await self._local_pool()
        return await queue.acquire(exclude=exclude, timeout_s=timeout_s), pool

    async def _local_pool(self) -> tuple[Store, Pool, WaitQueue]:
        if self._local is None:
            embedded = replace(
                self.settings, redis_url=None, redis_sentinels=(), redis_cluster=False
            )
            store = open_store(embedded)
            pool = Pool(store, self.settings)
            await pool.sync(self.sessions)
            queue = WaitQueue(pool, max_waiting=self._queue_max, observer=self._metrics)
            if self._waiting:
                queue.start()
            self._local = (store, pool, queue)
        return self._local

    def mark_down(self, exc: BaseException) -> None:
        """The store failed: say so once, and probe until it answers again."""
        if not self.store_up:
            return
        self.store_up = False
        self._back.clear()
        action = "serving from a local pool" if self.failure_mode == "open" else "answering 503"
        log.error("session store unreachable", error=str(exc), action=action)
        self._probe = asyncio.create_task(self._until_back())

    async def _until_back(self) -> None:
        attempt = 0
        while True:
            await asyncio.sleep(PROBE_BACKOFF_S[min(attempt, len(PROBE_BACKOFF_S) - 1)])
            attempt += 1
            try:
                await asyncio.wait_for(self.store.ping(), PROBE_TIMEOUT_S)
                await self.pool.sync(self.sessions)  # a restarted store may have lost it all
            except (StoreError, RedisError, OSError, TimeoutError):
                continue
            self.store_up = True
            self._back.set()
            self.queue.wake()
            log.info("session store reachable again", after_probes=attempt)
            return
