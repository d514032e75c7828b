"""Lease releases, sent in the background and in batches.

A request hands its release over and goes on: the release must land even when the request is
being cancelled (its client went away), and the answer to the client must not wait for it. What
the requests of one turn of the event loop hand over leaves together on the next turn -- each
release its own script call, all of them in one write (``Pool.release_many``) -- so under load
a release costs a share of one task, one write and one wake-up rather than all three. Batches do
not wait for each other: a release leaves as soon as it did when each had a task of its own, so
the next request already sees the cooldown a 429 started. The sending tasks are the replica's
background work, which ``Replica.close`` waits for.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from typing import Any

import structlog

from broker import LeaseError, Outcome, Release, Released, StoreError
from broker.shards import AnyPool

__all__ = ["BATCH_MAX", "Releases"]

log = structlog.get_logger(__name__)

#: Most releases sent in one write.
BATCH_MAX = 64


class Releases:
    """The releases one replica has yet to send."""

    def __init__(
        self,
        *,
        spawn: Callable[[Coroutine[Any, Any, None]], asyncio.Task[Any]],
        store_failed: Callable[[StoreError], None],
    ) -> None:
        self._spawn = spawn
        self._store_failed = store_failed
        self._pending: list[tuple[AnyPool, Release]] = []

    def submit(self, pool: AnyPool, release: Release) -> None:
        """Send ``release`` to ``pool`` on the next turn of the event loop; never waits, so a
        request being cancelled can call it."""
        if not self._pending:
            self._spawn(self._send_pending())
        self._pending.append((pool, release))

    async def _send_pending(self) -> None:
        """Send everything handed over since this task was made (its first step runs on the
        turn after the first submit), one batch per pool and BATCH_MAX releases."""
        pending, self._pending = self._pending, []
        by_pool: dict[AnyPool, list[Release]] = {}
        for pool, release in pending:
            by_pool.setdefault(pool, []).append(release)
        batches = [
            (pool, releases[start : start + BATCH_MAX])
            for pool, releases in by_pool.items()
            for start in range(0, len(releases), BATCH_MAX)
        ]
        for pool, releases in batches[1:]:  # rare: other pools (an outage), very large turns
            self._spawn(self._send(pool, releases))
        await self._send(*batches[0])

    async def _send(self, pool: AnyPool, releases: list[Release]) -> None:
        try:
            results = await pool.release_many(releases)
        except StoreError as exc:
            self._store_failed(exc)  # logged once per outage; the leases will expire
            return
        for release, result in zip(releases, results, strict=True):
            if isinstance(result, Released):
                _log_cooldown(release, result)
            elif isinstance(result, LeaseError):
                log.warning(
                    "release refused; the lease had ended",
                    session=release.lease.session_id,
                    error=str(result),
                )
            elif isinstance(result, StoreError):
                self._store_failed(result)


def _log_cooldown(release: Release, released: Released) -> None:
    """Log the cooldown a release started at info, once for the fleet; the other releases of
    the same wave (of this replica or another) found it running: a debug line each."""
    if not released.cooldown_until_ms:
        return
    until = datetime.fromtimestamp(released.cooldown_until_ms / 1000, UTC)
    event = (
        "session rate limited" if release.outcome is Outcome.RATE_LIMITED else "session quota spent"
    )
    (log.info if released.cooldown_started else log.debug)(
        event if released.cooldown_started else event + " again (already cooling)",
        session=release.lease.session_id,
        cooldown_until=until.isoformat(timespec="milliseconds"),
        cooldown_until_ms=released.cooldown_until_ms,
        retry_after_ms=release.retry_after_ms,
        exhausted_ms=release.exhausted_ms,
    )
