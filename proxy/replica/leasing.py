"""Where a replica gets its leases, and what it does while the store is unreachable.

Leases come from the shared pool, through its wait queue (QUEUE_TIMEOUT, QUEUE_MAX). When a call
to the store fails the replica marks the store down -- one log line saying how it failed
(unreachable, out of memory, credentials refused: ``broker.errors.StoreFailure``), and one more
whenever a probe finds it failing another way -- and, until a background probe (with backoff)
finds it answering again and has re-synced the sessions -- one more line:

* ``REDIS_FAILURE_MODE=closed`` (default): requests get 503 ``store_unavailable`` at once, its
  message saying how the store failed, and /readyz is false, so a load balancer sends traffic
  elsewhere;
* ``open``: the replica serves from a local pool of its own sessions, the same scripts on the
  embedded store; limits then hold per replica only. Back online it re-joins the shared state.

Several pools (see proxy.config.pools) share the one store client, and in an outage the one
embedded store. Leases remember the pool that granted them; their release and renewal go back there
(to the shard that granted them, in a pool spread over shards: broker/shards.py). A reload that
changes a pool's shard count serves it from new shards, as a new pool, and retires the old ones.

At start-up ``check_store`` turns away a store that answers but will never serve this replica
(credentials refused, no such database) before anything is written to it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Collection, Iterable
from contextlib import suppress
from dataclasses import dataclass, replace

import structlog
from redis.exceptions import RedisError

from broker import (
    BrokerSettings,
    ConfigError,
    Lease,
    NoSessionAvailable,
    Session,
    StoreError,
    WaitQueue,
    open_store,
)
from broker.errors import StoreFailure, store_failure
from broker.events import Transition
from broker.queue import QueueObserver
from broker.registry import PoolEntry, forget_pool, record_pools
from broker.shards import AnyPool, open_pool
from broker.store import Store
from proxy.config.pools import PoolPlan, PoolTable

log = structlog.get_logger(__name__)

#: Waits between probes of an unreachable store (seconds); the last one repeats.
PROBE_BACKOFF_S = (0.2, 0.5, 1.0, 2.0, 5.0)
#: How long a probe waits for the store's PONG.
PROBE_TIMEOUT_S = 1.0
#: How long the start-up check waits for the store's PONG (redis-py's own retries of a dropped
#: connection, about 2 s, fit in it); a store that does not answer by then is an outage, not a
#: configuration error: the replica starts unready and waits for it.
CHECK_TIMEOUT_S = 5.0
#: The log event of a store marked down, by how it failed.
DOWN_EVENTS = {
    StoreFailure.UNREACHABLE: "session store unreachable",
    StoreFailure.OUT_OF_MEMORY: "session store out of memory",
    StoreFailure.AUTHENTICATION: "session store refused the credentials",
    StoreFailure.FAILED: "session store failed",
}


async def check_store(settings: BrokerSettings, *, outage_ok: bool) -> None:
    """Turn away a store that answers but will never serve us, before anything is written to
    it: raises ConfigError naming REDIS_URL when it refuses the credentials or has no such
    database.

    ``outage_ok``: a store that cannot be reached (or fails otherwise) is no configuration error
    -- it may come up after the replica -- so that is logged, and the outage handling takes over
    once the replica runs; without it, StoreError naming the setting (an operator command).
    """
    if settings.redis_url is None and not settings.redis_sentinels:
        return  # the embedded store
    store = open_store(settings)
    try:
        await asyncio.wait_for(store.ping(), CHECK_TIMEOUT_S)
    except (RedisError, OSError, TimeoutError) as exc:
        failure = store_failure(exc)
        if failure is StoreFailure.AUTHENTICATION:
            raise ConfigError(f"REDIS_URL: {failure.message}: {exc}") from exc
        if "DB index is out of range" in str(exc):  # SELECT of a database the store lacks
            raise ConfigError(f"REDIS_URL: the session store has no such database: {exc}") from exc
        if not outage_ok:
            setting = "REDIS_SENTINELS" if settings.redis_sentinels else "REDIS_URL"
            detail = str(exc) or type(exc).__name__  # a timeout says nothing
            raise StoreError(f"{setting}: {failure.message}: {detail}", failure=failure) from exc
        log.warning(DOWN_EVENTS[failure], failure=failure, error=str(exc), at="start-up")
    finally:
        await store.aclose()


@dataclass(slots=True)
class Served:
    """One pool on one store: the pool, its wait queue, and the sessions this replica claims."""

    pool: AnyPool
    queue: WaitQueue
    sessions: list[Session]


class Leasing:
    """The shared pools and their queues, and the local fallback of REDIS_FAILURE_MODE=open."""

    def __init__(
        self,
        settings: BrokerSettings,
        table: PoolTable,
        *,
        queue_max: int,
        failure_mode: str,
        observe: Callable[[list[Transition]], None] | None = None,
        metrics: QueueObserver | None = None,
        replica_id: str | None = None,
    ) -> None:
        """``replica_id``: the id the pools' claims in the store carry (None: one of their own)."""
        self.settings = settings
        self.replica_id = replica_id
        self.failure_mode = failure_mode
        self.store: Store = open_store(settings)
        self._observe = observe
        self._metrics = metrics
        self._queue_max = queue_max
        self.served: dict[str, Served] = {}
        self.store_up = True
        #: How the store failed, while it is down.
        self.failure: StoreFailure | None = None
        self._local_store: Store | None = None
        self._local: dict[str, Served] = {}
        self._probe: asyncio.Task[None] | None = None
        self._back = asyncio.Event()
        self._waiting = False
        self._started = False
        self._entries: dict[str, PoolEntry] = {}
        self.configure(table)

    def _settings_of(self, plan: PoolPlan) -> BrokerSettings:
        return replace(self.settings, pool=plan.name, strategy=plan.strategy, shards=plan.shards)

    def _served(
        self, store: Store, settings: BrokerSettings, sessions: list[Session], *, observed: bool
    ) -> Served:
        """A pool on ``store`` and its queue (listening for wake-ups once started, if waits are
        on); ``observed``: its transitions go to the replica's listener."""
        pool = open_pool(
            store,
            settings,
            listener=self._observe if observed else None,
            claimant=self.replica_id,
        )
        queue = WaitQueue(pool, max_waiting=self._queue_max, observer=self._metrics)
        if self._started and self._waiting:
            queue.start()
        return Served(pool, queue, sessions)

    def configure(self, table: PoolTable) -> list[Served]:
        """Serve these pools from now on; returns the ones no longer served, for ``retire``.
        A pool kept keeps its queue; its sessions and strategy take effect at its next sync."""
        wanted = table.pools
        self._entries = {
            name: PoolEntry(
                strategy=plan.strategy.value,
                default=name == table.default,
                fallback=plan.fallback,
                path_prefix=plan.path_prefix,
                models=list(plan.models),
                shards=plan.shards,
            )
            for name, plan in wanted.items()
        }
        gone: list[Served] = []
        for name, plan in wanted.items():
            served = self.served.get(name)
            if served is not None and served.pool.settings.shards != plan.shards:
                gone.append(self.served.pop(name))  # new shards: a new layout, a new pool
                local = self._local.pop(name, None)
                if local is not None:
                    gone.append(local)
                served = None
            if served is None:
                settings = self._settings_of(plan)
                self.served[name] = self._served(self.store, settings, plan.sessions, observed=True)
            else:
                served.sessions = plan.sessions
                served.pool.settings = self._settings_of(plan)
            local = self._local.get(name)
            if local is not None:
                local.sessions = plan.sessions
        gone += [self.served.pop(name) for name in list(self.served) if name not in wanted]
        for name in [name for name in self._local if name not in wanted]:
            gone.append(self._local.pop(name))
        return gone

    async def retire(self, gone: Iterable[Served]) -> None:
        """Stop serving pools dropped by ``configure``: their claims go, their queues close."""
        for served in gone:
            with suppress(StoreError):
                await self._leave(served.pool)
            await served.queue.close()

    def start(self, *, waiting: bool) -> None:
        """``waiting``: requests may wait (QUEUE_TIMEOUT > 0), so listen for wake-ups; without
        it no pub/sub connection is opened."""
        self._waiting = waiting
        self._started = True
        if waiting:
            for served in self.served.values():
                served.queue.start()

    def pool(self, name: str) -> AnyPool:
        return self.served[name].pool

    async def sync(self) -> None:
        """Write every pool's sessions into the store; when it is unreachable, wait until the
        probe has found it again and synced them."""
        try:
            await self.sync_all()
        except StoreError as exc:
            self.mark_down(exc)
            await self._back.wait()

    async def sync_all(self) -> int:
        """Sync every pool's sessions, and record the pools for operators (broker.registry);
        the number of sessions in all pools."""
        sizes = [await served.pool.sync(served.sessions) for served in self.served.values()]
        await record_pools(self.store, self._entries)
        return sum(sizes)

    async def keep_claims(self) -> None:
        for served in list(self.served.values()):
            await served.pool.keep_claim()

    async def leave(self) -> None:
        """Drop this replica's claims on every pool."""
        for served in list(self.served.values()):
            await self._leave(served.pool)

    async def _leave(self, pool: AnyPool) -> None:
        # The last replica serving a shared pool: operators no longer see it. (A local pool of
        # an outage is this replica's alone, and says nothing of the fleet's.)
        if await pool.leave() == 0 and pool.redis is self.store:
            await forget_pool(self.store, pool.name)

    async def close(self) -> None:
        if self._probe is not None:
            self._probe.cancel()
            with suppress(asyncio.CancelledError):
                await self._probe
        for served in [*self.served.values(), *self._local.values()]:
            await served.queue.close()
        await self.store.aclose()
        if self._local_store is not None:
            await self._local_store.aclose()

    async def lease(
        self, name: str, *, exclude: Collection[str], timeout_s: float, precharge: int = 0
    ) -> tuple[Lease, AnyPool]:
        """A lease from pool ``name`` and the pool object it came from; raises
        NoSessionAvailable, or StoreError when the store is unreachable and the failure mode is
        closed."""
        served = self.served.get(name)
        if served is None:  # a reload dropped the pool while this request ran
            raise NoSessionAvailable("disabled", None, {})
        if self.store_up:
            try:
                lease = await served.queue.acquire(
                    exclude=exclude, timeout_s=timeout_s, precharge=precharge
                )
            except StoreError as exc:
                self.mark_down(exc)
            else:
                return lease, served.pool
        if self.failure_mode != "open":
            failure = self.failure or StoreFailure.UNREACHABLE
            raise StoreError(failure.message, failure=failure)
        local = await self._local_pool(name)
        lease = await local.queue.acquire(exclude=exclude, timeout_s=timeout_s, precharge=precharge)
        return lease, local.pool

    async def _local_pool(self, name: str) -> Served:
        local = self._local.get(name)
        if local is None:
            if self._local_store is None:
                embedded = replace(
                    self.settings, redis_url=None, redis_sentinels=(), redis_cluster=False
                )
                self._local_store = open_store(embedded)
            shared = self.served[name]
            local = self._served(
                self._local_store, shared.pool.settings, shared.sessions, observed=False
            )
            await local.pool.sync(local.sessions)
            self._local[name] = local
        return local

    def mark_down(self, exc: BaseException) -> None:
        """The store failed: say so once, and probe until it answers again."""
        if not self.store_up:
            return
        self.store_up = False
        self._back.clear()
        self._say_down(exc)
        self._probe = asyncio.create_task(self._until_back())

    def _say_down(self, exc: BaseException) -> None:
        """One ERROR line saying how the store failed (and, while it stays down, another only
        when it starts failing another way)."""
        self.failure = store_failure(exc)
        action = "serving from a local pool" if self.failure_mode == "open" else "answering 503"
        log.error(DOWN_EVENTS[self.failure], failure=self.failure, error=str(exc), action=action)

    async def _until_back(self) -> None:
        attempt = 0
        while True:
            await asyncio.sleep(PROBE_BACKOFF_S[min(attempt, len(PROBE_BACKOFF_S) - 1)])
            attempt += 1
            try:
                await asyncio.wait_for(self.store.ping(), PROBE_TIMEOUT_S)
                await self.sync_all()  # a restarted store may have lost it all
            except (StoreError, RedisError, OSError, TimeoutError) as exc:
                if store_failure(exc) is not self.failure:
                    self._say_down(exc)
                continue
            self.store_up = True
            self.failure = None
            self._back.set()
            for served in self.served.values():
                served.queue.wake()
            log.info("session store reachable again", after_probes=attempt)
            return
