"""A replica's periodic look at the fleet: alert checks and its turn at the health summary.

Every ALERT_CHECK_INTERVAL seconds (and at once after a transition that may start or end an
alert) the replica reports its upstream outcomes and asks the store which alerts changed; only
the replica that sees a change sends its notice. In the same beat it asks whether it is its turn
to log the health summary: one replica of the fleet gets each turn, every HEALTH_CHECK_INTERVAL
seconds or after HEALTH_SUMMARY_REQUESTS requests across the fleet.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import socket
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Protocol

import structlog

from broker import StoreError
from broker.alerts import AlertRules, check_alerts
from broker.events import Transition
from broker.shard_admin import AnyAdmin
from broker.states import SessionState
from proxy.config.settings import Settings
from proxy.telemetry.metrics import Metrics
from proxy.telemetry.webhook import Webhook, notice

__all__ = ["HEALTH_SUMMARY_REQUESTS", "Watch", "WatchedPools", "replica_id"]

log = structlog.get_logger(__name__)

#: Fleet-wide requests after which a health summary is due before its interval is over.
HEALTH_SUMMARY_REQUESTS = 100
#: Least time between two summaries (ms), so heavy traffic cannot turn them into a flood of
#: lines; shorter when HEALTH_CHECK_INTERVAL itself is shorter.
HEALTH_SUMMARY_MIN_GAP_MS = 10_000


def replica_id() -> str:
    """A name for this replica in logs: host, process, and a random part for restarts."""
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(2)}"


#: States whose start or end may start or end an alert (auth, all_rate_limited).
_ALERTING_STATES = frozenset({SessionState.DISABLED, SessionState.COOLING, SessionState.QUOTA})


def _may_change_alerts(t: Transition) -> bool:
    return t.kind == "breaker" or bool(_ALERTING_STATES & {t.old, t.new})


def _iso(ms: int | None) -> str | None:
    return None if not ms else datetime.fromtimestamp(ms / 1000, UTC).isoformat()


class WatchedPools(Protocol):
    """The pools a replica serves now (a reload changes them), each with its admin."""

    @property
    def main_pool(self) -> str: ...

    @property
    def admins(self) -> dict[str, AnyAdmin]: ...


class Watch:
    """The background task of one replica; started once its sessions are synced."""

    def __init__(
        self,
        settings: Settings,
        metrics: Metrics,
        pools: WatchedPools,
        *,
        replica_id: str,
        synced: asyncio.Event,
    ) -> None:
        self.pools = pools
        self.replica_id = replica_id
        self.synced = synced
        self.settings = settings
        self.metrics = metrics
        url = self.settings.alert_webhook_url
        self.webhook = Webhook(url, self.metrics) if url else None
        self.rules = AlertRules(
            error_rate=self.settings.alert_error_rate,
            window_ms=round(self.settings.alert_error_window * 1000),
        )
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        # What the store has heard of from this replica: attempts, errors, requests.
        self._attempts = self._errors = self._requests = 0

    def on_transitions(self, transitions: Iterable[Transition]) -> None:
        transitions = list(transitions)
        self.metrics.transitions(transitions)
        if self.webhook is not None and any(map(_may_change_alerts, transitions)):
            self._wake.set()

    def start(self) -> None:
        if self.webhook is not None:
            self.webhook.start()
        self._task = asyncio.create_task(self._run())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self.webhook is not None:
            await self.webhook.close()

    async def _run(self) -> None:
        await self.synced.wait()
        while True:
            try:
                await self.check()
            except StoreError as exc:
                log.warning("fleet check failed; retrying next beat", error=str(exc))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.settings.alert_check_interval)
            self._wake.clear()

    async def check(self) -> None:
        """One beat, for each pool: alerts (when a webhook is configured), then the summary
        turn. This replica's attempts and requests are reported to its default pool (the
        error-rate alert and the summary's request count are per replica, not per pool)."""
        main = self.pools.main_pool
        attempts, errors = self.metrics.attempts_total, self.metrics.errors_total
        requests = self.metrics.requests_total
        for name, admin in list(self.pools.admins.items()):
            mine = name == main
            await self._check_pool(
                admin,
                attempts=attempts - self._attempts if mine else 0,
                errors=errors - self._errors if mine else 0,
                requests=requests - self._requests if mine else 0,
            )
        self._attempts, self._errors, self._requests = attempts, errors, requests

    async def _check_pool(
        self, admin: AnyAdmin, *, attempts: int, errors: int, requests: int
    ) -> None:
        if self.webhook is not None:
            changes = await check_alerts(admin.pool, self.rules, attempts=attempts, errors=errors)
            now = await admin.now_ms() if changes else 0
            for change in changes:
                log.warning(
                    "alert",
                    pool=admin.pool.name,
                    alert=change.name,
                    status=change.status,
                    detail=change.detail,
                )
                self.webhook.send(notice(admin.pool.name, change, now))
        interval_ms = round(self.settings.health_check_interval * 1000)
        turn, now = await admin.summary_turn(
            requests,
            interval_ms=interval_ms,
            every_requests=HEALTH_SUMMARY_REQUESTS,
            min_gap_ms=min(HEALTH_SUMMARY_MIN_GAP_MS, interval_ms),
        )
        if turn:
            await self.summary(admin, now)

    async def summary(self, admin: AnyAdmin, turn_at_ms: int) -> None:
        """The health summary: a line for the pool, then one line per session."""
        census = await admin.census()
        views = await admin.sessions()
        now = census.now_ms
        common = {"pool": admin.pool.name, "replica": self.replica_id, "turn_at_ms": turn_at_ms}
        log.info("health summary", **common, sessions=census.sessions, leases=census.leases)
        for v in views:
            log.info(
                "session health",
                **common,
                session=v.id,
                state=v.state,
                health=v.health,
                success_rate=v.success_rate,
                latency_ms=v.latency_ms,
                in_flight=v.in_flight,
                breaker=v.breaker,
                cooling_until=_iso(v.cooldown_until_ms) if v.cooldown_until_ms > now else None,
                requests=sum(v.outcomes.values()),
                last_error=v.last_error,
                last_error_at=_iso(v.last_error_at_ms),
            )
