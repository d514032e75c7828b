"""One attempt's lease: who granted it, its lifetime, the one place it is released, and its
renewal while the request is live.

``HeldLease`` is an async context manager around the whole attempt, and the lease is released by
construction: every way an attempt ends -- a failure kept for a replay, an answer streamed, the
client leaving, a session this replica holds no secret for -- calls ``HeldLease.release``, and
whatever escapes the attempt unreleased (a parser failing, a client hanging up, a bug) is released
on the way out of the block: with the outcome of the upstream's status once it has answered,
else as unused. A release is handed to the background so it lands even when the request is being
cancelled. While the block runs the lease is renewed every LEASE_TTL/3, so a request that stays
live -- a slow body coming in, a long answer going out -- keeps its session's concurrency slot
and ``max_concurrency`` holds for it.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from types import TracebackType

import structlog
from aiohttp import web

from broker import Lease, LeaseError, Outcome, Release, StoreError
from broker.shards import AnyPool
from proxy.config.pools import PoolPlan
from proxy.request.services import Services

__all__ = ["NO_WAITS", "HeldLease", "Renewal", "Waits"]

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class Waits:
    """What an answer says about waiting: its Retry-After, and how long until its rate-limit
    headers say the session has quota again (when they say none is left)."""

    retry_after_ms: int | None
    exhausted_ms: int | None
    #: The request rate its rate-limit headers state (requests a minute): the session's seed.
    stated_rpm: float | None = None


NO_WAITS = Waits(None, None)


class HeldLease:
    """A lease with the pool object that granted it (a shared one, or the local fallback in an
    outage) and the pool's plan (upstream, header, secrets). Use it as ``async with held:``."""

    __slots__ = (
        "_released",
        "_renewal",
        "_services",
        "answered",
        "lease",
        "plan",
        "pool",
        "refused_by",
        "request_kind",
        "response",
        "sent_at",
    )

    def __init__(
        self,
        lease: Lease,
        pool: AnyPool,
        plan: PoolPlan,
        services: Services,
        *,
        request_kind: str = "",
        refused_by: str = "",
    ) -> None:
        self.lease = lease
        self.pool = pool
        self.plan = plan
        #: The 401/403 judgement's facts for this attempt's release (proxy.request.judgement).
        self.request_kind = request_kind
        self.refused_by = refused_by
        self._services = services
        #: When the attempt went upstream (time.monotonic()); None: not yet.
        self.sent_at: float | None = None
        #: What the upstream's status says of the session, once it has answered.
        self.answered: Outcome | None = None
        #: The answer being sent to the client, once one is: after its headers have left, no
        #: other answer can be given.
        self.response: web.StreamResponse | None = None
        self._released = False
        self._renewal: Renewal | None = None

    async def __aenter__(self) -> HeldLease:
        self._renewal = Renewal(self, self._services.settings.lease_ttl_s)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if not self._released:
            # Nothing released it on the way: an exception (a client hanging up, a bug) cut the
            # attempt short. Before an answer nothing is known of the session.
            detail = f"proxy: {type(exc).__name__}" if exc is not None else "proxy"
            self.release(self.answered or Outcome.UNUSED, detail=detail)

    @property
    def released(self) -> bool:
        return self._released

    def sending(self) -> None:
        self.sent_at = time.monotonic()

    def since_sent_s(self) -> float:
        assert self.sent_at is not None, "not sent"
        return time.monotonic() - self.sent_at

    def ms_since_sent(self) -> int:
        return -1 if self.sent_at is None else round(self.since_sent_s() * 1000)

    def release(
        self,
        outcome: Outcome,
        *,
        latency_ms: int | None = None,
        waits: Waits = NO_WAITS,
        detail: str = "",
        units: int | None = None,
    ) -> None:
        """Release in the background: it must land even when this request is being cancelled.
        ``latency_ms`` defaults to the time since the attempt was sent (-1: never sent). Only
        the first call of an attempt counts."""
        if self._released:
            return
        self._released = True
        if self._renewal is not None:
            self._renewal.cancel()
        lease = self.lease
        if units is None and lease.session_id not in self.plan.metered:
            units = 0  # a pre-charge stands only against a unit budget
        if latency_ms is None:
            latency_ms = self.ms_since_sent()
        release = Release(
            lease,
            outcome,
            latency_ms,
            waits.retry_after_ms,
            waits.exhausted_ms,
            detail,
            units,
            self.request_kind,
            self.refused_by,
            waits.stated_rpm,
        )
        self._services.releases.submit(self.pool, release)
        # Counted after the release is on its way: a failing metrics hook cannot hold it back.
        self._services.metrics.lease_released(
            lease.pool, lease.session_id, outcome, exhausted=waits.exhausted_ms is not None
        )

    async def _renew(self, period_s: float) -> None:
        lease = self.lease
        while True:
            try:
                lease = await self.pool.renew(lease)
            except LeaseError:
                log.warning("lease lost while its request was live", session=lease.session_id)
                return
            except StoreError as exc:
                self._services.leasing.mark_down(exc)
            await asyncio.sleep(period_s)


class Renewal:
    """Renews a lease every LEASE_TTL/3 while its attempt is live. Most attempts end sooner: for
    them only a timer was set, no task made; the renewing task starts when the first renewal is
    due."""

    __slots__ = ("_held", "_period_s", "_task", "_timer")

    def __init__(self, held: HeldLease, lease_ttl_s: float) -> None:
        self._held = held
        self._period_s = lease_ttl_s / 3
        self._task: asyncio.Task[None] | None = None
        self._timer = asyncio.get_running_loop().call_later(self._period_s, self._start)

    def _start(self) -> None:
        self._task = asyncio.create_task(self._held._renew(self._period_s))

    def cancel(self) -> None:
        self._timer.cancel()
        if self._task is not None:
            self._task.cancel()
