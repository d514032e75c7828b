"""Every error the broker raises. The tree::

BrokerError                 root: catch this to catch them all
├── ConfigError             a bad setting or sessions file; the message names it
├── StoreError              the store (Redis) failed or could not be reached; ``failure`` says how
├── NoSessionAvailable      nothing can be leased now; says why and when to try again
└── LeaseError              a lease id the store does not know or no longer holds
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum

from redis.exceptions import (
    AuthenticationError,
    AuthenticationWrongNumberOfArgsError,
    NoPermissionError,
    OutOfMemoryError,
    ResponseError,
)

__all__ = [
    "BrokerError",
    "ConfigError",
    "LeaseError",
    "NoSessionAvailable",
    "QueueFull",
    "StoreError",
    "StoreFailure",
    "UnknownSession",
    "store_failure",
]


class BrokerError(Exception):
    """Root of the broker's errors."""


class ConfigError(BrokerError):
    """A setting or the sessions file is invalid. The message names what and what is accepted."""


class StoreFailure(StrEnum):
    """What went wrong with the store: an operator acts differently on each."""

    #: No answer: connection refused or dropped, a timeout, a name that does not resolve.
    UNREACHABLE = "unreachable"
    #: Redis is at its ``maxmemory`` and refuses writes (an ``OOM`` error).
    OUT_OF_MEMORY = "out_of_memory"
    #: The credentials were refused (wrong password or user), or the ACL user lacks a permission.
    AUTHENTICATION = "authentication"
    #: Redis answered with another error.
    FAILED = "failed"

    @property
    def message(self) -> str:
        """What a client or a log line is told."""
        return _FAILURE_MESSAGES[self]


_FAILURE_MESSAGES = {
    StoreFailure.UNREACHABLE: "the session store is unreachable",
    StoreFailure.OUT_OF_MEMORY: "the session store is out of memory",
    StoreFailure.AUTHENTICATION: "the session store refused the credentials",
    StoreFailure.FAILED: "the session store answered with an error",
}


#: How far along a chain of causes ``store_failure`` looks (a chain can loop).
_CHAIN_DEPTH = 8


def store_failure(exc: BaseException | None) -> StoreFailure:
    """What ``exc`` (a StoreError, or a Redis or socket error) says went wrong, reading along its
    causes (``raise ... from``); a failure nothing tells of is taken as unreachable."""
    for _ in range(_CHAIN_DEPTH):
        if exc is None:
            break
        found = _failure_of(exc)
        if found is not None:
            return found
        exc = exc.__cause__ or exc.__context__
    return StoreFailure.UNREACHABLE


def _failure_of(exc: BaseException) -> StoreFailure | None:
    """The failure one exception shows, or None when it shows none (look at its cause)."""
    if isinstance(exc, StoreError):
        return exc._failure
    if isinstance(exc, OutOfMemoryError):
        return StoreFailure.OUT_OF_MEMORY
    # redis-py raises AuthenticationError (a ConnectionError) on a refused AUTH or HELLO.
    auth = (AuthenticationError, AuthenticationWrongNumberOfArgsError, NoPermissionError)
    if isinstance(exc, auth):
        return StoreFailure.AUTHENTICATION
    if isinstance(exc, ResponseError):
        # A script's write refused under maxmemory can come back as a plain error naming OOM.
        oom = "OOM command not allowed" in str(exc)
        return StoreFailure.OUT_OF_MEMORY if oom else StoreFailure.FAILED
    return None


class StoreError(BrokerError):
    """The store failed: Redis unreachable, timed out, or a script answered an error.

    ``failure`` tells which (StoreFailure): given, or read from the Redis error that caused it
    (``raise StoreError(...) from exc``).
    """

    def __init__(self, message: str, *, failure: StoreFailure | None = None) -> None:
        super().__init__(message)
        self._failure = failure

    @property
    def failure(self) -> StoreFailure:
        return store_failure(self)


class LeaseError(BrokerError):
    """The lease is unknown to the store (never granted, or forgotten long ago)."""


class NoSessionAvailable(BrokerError):
    """No session of the pool can be leased right now.

    ``reason`` is ``empty`` (the pool has no sessions), ``disabled`` (none enabled), ``tried``
    (this request already tried every eligible one), ``queued`` (older requests of the fleet are
    waiting and go first), or else whichever of ``open`` (circuit breaker), ``cooling`` (after a
    429), ``quota`` (rpm or tpm budget used up) and ``busy`` (at their concurrency limit or
    probing a half-open breaker) holds the most sessions, a tie going to the first of these.
    ``retry_after_ms`` is the time until the earliest known moment one becomes
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
