"""A replica: what one proxy process holds. Its store client, its pool, its secrets (never sent
anywhere but the upstream), its pooled upstream client, and its lifecycle (synced, draining,
requests in flight).

A replica serves one pool or several (see proxy.replica.pools), all on one store client.

Live configuration: every SESSIONS_RELOAD_INTERVAL seconds, and on SIGHUP, the replica re-reads
SESSIONS_FILE. It compares content, not modification times: Kubernetes updates a mounted Secret by
swapping a symlink, which leaves the file's own mtime meaningless. A changed, valid file replaces
the pools and sessions at once (requests in flight keep the secret they started with) and is
synced to the store as this replica's claim (see ``broker.Pool.sync``); a pool the file no longer
declares loses this replica's claim and stops being served; an unreadable or invalid one is logged
and ignored, so a half-written edit never takes a replica down.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Coroutine
from functools import partial
from pathlib import Path
from typing import Any

import aiohttp
import structlog
from aiohttp import web
from redis.exceptions import RedisError

from broker import ConfigError, Pool, Session, StoreError
from broker.admin import PoolAdmin
from broker.constants import OPS_SET_LIMIT
from proxy.ops.logs import REDACTOR
from proxy.ops.metrics import Metrics
from proxy.replica.leasing import Leasing, Served
from proxy.replica.pools import PoolPlan, PoolTable, load_pools, single_pool
from proxy.replica.releases import Releases
from proxy.replica.watch import Watch, replica_id
from proxy.settings import Settings

log = structlog.get_logger(__name__)

#: How long /readyz waits for the store's PONG.
READY_PING_TIMEOUT_S = 1.0
#: How long a stopping replica tries to drop its claim; if the store does not answer in time the
#: claim expires by itself.
LEAVE_TIMEOUT_S = 1.0


class Replica:
    """State and resources of one proxy process, shared by its proxy and ops apps."""

    def __init__(self, settings: Settings, pools: PoolTable | list[Session]) -> None:
        """``pools``: what ``proxy.replica.pools.load_pools`` read, or one pool's sessions."""
        self.settings = settings
        if not isinstance(pools, PoolTable):
            pools = single_pool(settings, pools)
        self._leasing: Leasing | None = None
        # Operations: secrets kept out of every log line, metrics, the fleet watch.
        REDACTOR.add(settings.secret_values)
        self.id = replica_id()
        self.metrics = Metrics(settings.metrics_prefix)  # its pools: see _admins_follow
        self.watch = Watch(self)
        self.admins: dict[str, PoolAdmin] = {}
        self._use(pools)
        #: Digest of the sessions file's content as last read (loaded or rejected).
        self._file_digest: str | None = None
        #: The sessions in use differ from those last written to the store.
        self._unsynced = True
        self._reloading = asyncio.Lock()
        #: Pools dropped by a reload whose claims are still to be dropped.
        self._retiring: list[Served] = []
        self.header_families = settings.header_families
        self.draining = False
        self.synced = asyncio.Event()
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._background: set[asyncio.Task[Any]] = set()
        #: Lease releases on their way to the store (sent in batches by background work).
        self.releases = Releases(spawn=self.spawn, store_failed=self._store_failed)
        self._client: aiohttp.ClientSession | None = None
        self._maintenance: asyncio.Task[None] | None = None

    @property
    def leasing(self) -> Leasing:
        assert self._leasing is not None, "replica not started"
        return self._leasing

    @property
    def pool(self) -> Pool:
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
    def client(self) -> aiohttp.ClientSession:
        assert self._client is not None, "replica not started"
        return self._client

    async def start(self) -> None:
        self._leasing = Leasing(
            self.settings.broker(),
            self.table,
            queue_max=self.settings.queue_max,
            failure_mode=self.settings.redis_failure_mode,
            observe=self.watch.on_transitions,
            metrics=self.metrics,
        )
        self._leasing.start(waiting=self.settings.queue_timeout > 0)
        self._admins_follow()
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
            name: self.admins[name] if name in self.admins else PoolAdmin(s.pool)
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
            if self.settings.sessions_file is not None:
                self._read_file(Path(self.settings.sessions_file), force=force)
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

    def _read_file(self, path: Path, *, force: bool) -> None:
        try:
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
        except OSError as exc:
            log.warning("sessions file unreadable; keeping the sessions in use", error=exc.strerror)
            return
        if digest == self._file_digest and not force:
            return
        self._file_digest = digest
        try:
            table = load_pools(self.settings)
        except ConfigError as exc:
            log.warning("sessions file rejected; keeping the sessions in use", error=str(exc))
            return
        if table == self.table:
            return
        for name, plan in table.pools.items():
            old = self.plans[name].secrets if name in self.plans else {}
            new = plan.secrets
            if old != new:
                log.info(
                    "sessions file changed",
                    pool=name,
                    added=sorted(new.keys() - old.keys()),
                    removed=sorted(old.keys() - new.keys()),
                    rotated=sorted(i for i in new.keys() & old.keys() if new[i] != old[i]),
                )
        dropped = sorted(self.plans.keys() - table.pools.keys())
        if dropped:
            log.info("pools no longer served", pools=dropped)
        self._retiring += self._use(table)
        self._unsynced = True

    @property
    def admin(self) -> PoolAdmin:
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
        if self._client is not None:
            await self._client.close()
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

    def tracking(self) -> _InFlight:
        """Count a request in flight for the duration of an ``async with`` block."""
        return _InFlight(self)

    def _begin(self) -> None:
        self._in_flight += 1
        self._idle.clear()

    def _end(self) -> None:
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


class _InFlight:
    """``Replica.tracking``'s block: a class, not a generator (it is entered for every request)."""

    __slots__ = ("_replica",)

    def __init__(self, replica: Replica) -> None:
        self._replica = replica

    async def __aenter__(self) -> None:
        self._replica._begin()

    async def __aexit__(self, *exc_info: object) -> None:
        self._replica._end()


REPLICA = web.AppKey("replica", Replica)
