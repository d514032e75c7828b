"""A replica: what one proxy process holds. Its leasing (the store client and its pools), its
pools' plans and secrets (never sent anywhere but the upstream), the releases on their way, its
operator surfaces' state (metrics, pool admins, the fleet watch) and its lifecycle (synced,
admission: draining and requests in flight). The request path gets a narrow part of it
(proxy.request.services), never the whole.

A replica serves one pool or several (see proxy.config.pools), all on one store client.

Live configuration: every SESSIONS_RELOAD_INTERVAL seconds, and on SIGHUP, the replica re-reads
SESSIONS_FILE (proxy.replica.reload). A changed, valid file replaces the pools and sessions at once
(requests in flight keep the secret they started with) and is synced to the store as this
replica's claim (see ``broker.Pool.sync``); a pool the file no longer declares loses this
replica's claim and stops being served.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from functools import partial
from pathlib import Path
from typing import Any

import structlog
from aiohttp import web
from redis.exceptions import RedisError

from broker import Session, StoreError
from broker.constants import OPS_SET_LIMIT
from broker.shard_admin import AnyAdmin, open_admin
from broker.shards import AnyPool
from proxy.config.pools import PoolPlan, PoolTable, single_pool
from proxy.config.settings import Settings
from proxy.replica.admission import Admission
from proxy.replica.leasing import Leasing, Served
from proxy.replica.releases import Releases
from proxy.replica.reload import SessionsFile
from proxy.replica.watch import Watch, replica_id
from proxy.telemetry.logs import REDACTOR
from proxy.telemetry.metrics import Metrics

log = structlog.get_logger(__name__)

#: How long /readyz waits for the store's PONG.
READY_PING_TIMEOUT_S = 1.0
#: How long a stopping replica tries to drop its claim; if the store does not answer in time the
#: claim expires by itself.
LEAVE_TIMEOUT_S = 1.0


class Replica:
    """State and resources of one proxy process, shared by its proxy and ops apps."""

    def __init__(self, settings: Settings, pools: PoolTable | list[Session]) -> None:
        """``pools``: what ``proxy.config.pools.load_pools`` read, or one pool's sessions."""
        self.settings = settings
        if not isinstance(pools, PoolTable):
            pools = single_pool(settings, pools)
        self._leasing: Leasing | None = None
        # Operations: secrets kept out of every log line, metrics, the fleet watch.
        REDACTOR.add(settings.secret_values)
        self.id = replica_id()
        # Its pools: see _admins_follow.
        self.metrics = Metrics(
            settings.metrics_prefix, per_session=settings.metrics_per_session, replica_id=self.id
        )
        self.synced = asyncio.Event()
        self.watch = Watch(settings, self.metrics, self, replica_id=self.id, synced=self.synced)
        self.admins: dict[str, AnyAdmin] = {}
        self._use(pools)
        path = settings.sessions_file
        self._file = SessionsFile(settings, Path(path)) if path is not None else None
        #: The sessions in use differ from those last written to the store.
        self._unsynced = True
        self._reloading = asyncio.Lock()
        #: Pools dropped by a reload whose claims are still to be dropped.
        self._retiring: list[Served] = []
        self.admission = Admission()
        self._background: set[asyncio.Task[Any]] = set()
        #: Lease releases on their way to the store (sent in batches by background work).
        self.releases = Releases(spawn=self.spawn, store_failed=self._store_failed)
        self._maintenance: asyncio.Task[None] | None = None

    @property
    def leasing(self) -> Leasing:
        assert self._leasing is not None, "replica not started"
        return self._leasing

    @property
    def pool(self) -> AnyPool:
        """The default pool (the only one, unless the sessions file declares several)."""
        return self.leasing.pool(self.main_pool)

    @property
    def main_pool(self) -> str:
        """The default pool's name, or the first pool's when there is no default."""
        return self.table.default or next(iter(self.table.pools))

    @property
    def plans(self) -> dict[str, PoolPlan]:
        return self.table.pools

    def pool_plan(self, name: str | None = None) -> PoolPlan:
        """The plan of pool ``name`` (default: the default pool)."""
        return self.table.pools[name or self.main_pool]

    @property
    def draining(self) -> bool:
        return self.admission.draining

    async def start(self) -> None:
        self._leasing = Leasing(
            self.settings.broker(),
            self.table,
            queue_max=self.settings.queue_max,
            failure_mode=self.settings.redis_failure_mode,
            observe=self.watch.on_transitions,
            metrics=self.metrics,
            replica_id=self.id,
        )
        self._leasing.start(waiting=self.settings.queue_timeout > 0)
        self._admins_follow()
        self.watch.start()
        self._maintenance = asyncio.create_task(self._maintain())

    def _use(self, table: PoolTable) -> list[Served]:
        """Serve ``table`` from now on (one assignment, atomic for the request handlers);
        returns the pools no longer served, to be retired."""
        REDACTOR.add([s.secret for s in table.sessions])  # before any log line could carry one
        self.table = table
        if self._leasing is None:
            return []
        gone = self._leasing.configure(table)
        self._admins_follow()
        return gone

    def _admins_follow(self) -> None:
        served = self.leasing.served
        self.admins = {
            name: admin
            if (admin := self.admins.get(name)) and admin.pool is s.pool
            else open_admin(s.pool)
            for name, s in served.items()
        }
        table = self.table
        self.metrics.pools_served(
            (name, plan.fallback, name == table.default) for name, plan in table.pools.items()
        )
        self.metrics.cluster.reads = {
            name: partial(admin.census, limit=OPS_SET_LIMIT) for name, admin in self.admins.items()
        }

    @property
    def sessions(self) -> list[Session]:
        """Every session of every pool this replica serves."""
        return self.table.sessions

    async def _maintain(self) -> None:
        """Sync at start-up, then keep the claim alive and watch the sessions file."""
        await self._sync_at_start()
        loops = [self._keep_claim()]
        if self.settings.sessions_file and self.settings.sessions_reload_interval > 0:
            loops.append(self._watch_file(self.settings.sessions_reload_interval))
        await asyncio.gather(*loops)

    async def _sync_at_start(self) -> None:
        """Write this replica's sessions into the store; if it is unreachable, the outage
        handling takes over and syncs them once it answers (see proxy.replica.leasing)."""
        async with self._reloading:
            await self.leasing.sync()
            self._unsynced = False
        log.info("sessions synced", pools=list(self.plans), sessions=len(self.sessions))
        self.synced.set()

    async def _keep_claim(self) -> None:
        period_s = self.leasing.settings.claim_ttl_ms / 3000
        while True:
            await asyncio.sleep(period_s)
            try:
                await self.leasing.keep_claims()
            except StoreError as exc:
                self.leasing.mark_down(exc)  # logged once; the probe syncs again when it is back

    async def _watch_file(self, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)
            await self.reload()

    def request_reload(self) -> None:
        """Reload in the background (the SIGHUP handler): re-read and re-sync even if unchanged."""
        if self._leasing is not None:
            self.spawn(self.reload(force=True))

    async def reload(self, *, force: bool = False) -> None:
        """Re-read SESSIONS_FILE; if its content changed (or ``force``), serve and sync it.

        Never raises for a bad file or an unreachable store: the first is logged and ignored,
        the second retried on the next call.
        """
        async with self._reloading:
            self._read_file(force=force)
            if not (self._unsynced or force):
                return
            if self._retiring:
                await self.leasing.retire(self._retiring)
                self._retiring = []
            try:
                size = await self.leasing.sync_all()
            except StoreError as exc:
                log.warning("reloaded sessions not yet in the store; will retry", error=str(exc))
                return
            self._unsynced = False
            log.info("sessions synced", pools=list(self.plans), sessions=size)

    def _read_file(self, *, force: bool) -> None:
        if self._file is None:
            return
        table = self._file.changed(self.table, force=force)
        if table is not None:
            self._retiring += self._use(table)
            self._unsynced = True

    @property
    def admin(self) -> AnyAdmin:
        """The default pool's admin (``admins`` has every pool's)."""
        assert self.admins, "replica not started"
        return self.admins[self.main_pool]

    async def close(self) -> None:
        await self.watch.close()
        if self._maintenance is not None:
            self._maintenance.cancel()
            await asyncio.gather(self._maintenance, return_exceptions=True)
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
        if self.synced.is_set() and self.leasing.store_up:
            try:
                await asyncio.wait_for(self.leasing.leave(), LEAVE_TIMEOUT_S)
            except (StoreError, TimeoutError) as exc:
                log.warning("could not drop this replica's claim; it will expire", error=str(exc))
        if self._leasing is not None:
            await self._leasing.close()

    def _store_failed(self, exc: StoreError) -> None:
        self.leasing.mark_down(exc)

    def spawn(self, work: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Run ``work`` in the background; close() waits for it (lease releases must land)."""
        task = asyncio.create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

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
