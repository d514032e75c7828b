"""Every error the broker raises. The tree::

BrokerError                 root: catch this to catch them all
├── ConfigError             a bad setting or sessions file; the message names it
├── StoreError              the store (Redis) failed or could not be reached
├── NoSessionAvailable      nothing can be leased now; says why and when to try again
└── LeaseError              a lease id the store does not know or no longer holds
"""

from __future__ import annotations

from collections.abc import Mapping

__all__ = [
    "BrokerError",
    "ConfigError",
    "LeaseError",
    "NoSessionAvailable",
    "QueueFull",
    "StoreError",
    "UnknownSession",
]


class BrokerError(Exception):
    """Root of the broker's errors."""


class ConfigError(BrokerError):
    """A setting or the sessions file is invalid. The message names what and what is accepted."""


class StoreError(BrokerError):
    """The store failed: Redis unreachable, timed out, or a script answered an error."""


class LeaseError(BrokerError):
    """The lease is unknown to the store (never granted, or forgotten long ago)."""


class NoSessionAvailable(BrokerError):
    """No session of the pool can be leased right now.

    ``reason`` is ``empty`` (the pool has no sessions), ``disabled`` (none enabled), ``tried``
    (this request already tried every eligible one), ``queued`` (older requests of the fleet are
    waiting and go first), ``busy`` (some are at their concurrency
    limit or probing a half-open breaker: one may free up any moment), or else whichever of
    ``cooling`` (after a 429), ``open`` (circuit breaker) and ``quota`` (rpm or tpm budget used
    up) ends soonest. ``retry_after_ms`` is the time until the earliest known moment one becomes
    available, or None when no such moment is known. ``counts`` has the number of sessions in
    each of available, cooling, busy, disabled, open and quota.
    """

    def __init__(
        self,
        reason: str,
        retry_after_ms: int | None,
        counts: Mapping[str, int],
        *,
        store_now_ms: int | None = None,
    ) -> None:
        self.reason = reason
        self.retry_after_ms = retry_after_ms
        self.counts = dict(counts)
        #: The store's clock when this was decided (ms), if it came from the store.
        self.store_now_ms = store_now_ms
        when = "" if retry_after_ms is None else f"; earliest in {retry_after_ms} ms"
        detail = ", ".join(f"{name} {count}" for name, count in self.counts.items())
        super().__init__(f"no session available: {reason} ({detail}){when}")


class UnknownSession(BrokerError):
    """The pool has no session of that id."""


class QueueFull(NoSessionAvailable):
    """Nothing can be leased now and this replica already has QUEUE_MAX requests waiting.

    ``reason`` and ``retry_after_ms`` are the most recent the queue learned from the store.
    """
