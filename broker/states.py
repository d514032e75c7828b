"""The words the scripts and the broker share: a session's state, its breaker's, why an acquire
was refused, why a session is disabled, what a release came to. Each is a ``StrEnum``, so a
value equals the string the scripts write and read (``SessionState.COOLING == "cooling"``)."""

from __future__ import annotations

from enum import StrEnum

__all__ = ["BreakerState", "DisableReason", "LeaseStatus", "Refusal", "SessionState"]


class SessionState(StrEnum):
    """A session's ``state`` field: the first that applies, in this order (lua/common.lua)."""

    REMOVED = "removed"  # no live replica's configuration names it
    DISABLED = "disabled"  # by configuration, an operator, a drain or a 401/403
    OPEN = "open"  # its circuit breaker is open
    COOLING = "cooling"  # after a 429, until its cooldown deadline
    QUOTA = "quota"  # its rpm or tpm budget admits nothing yet
    PROBING = "probing"  # half-open breaker whose probes are all out
    BUSY = "busy"  # at its max_concurrency
    AVAILABLE = "available"


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class Refusal(StrEnum):
    """Why an acquire got no session (``NoSessionAvailable.reason``)."""

    EMPTY = "empty"  # the pool has no sessions
    DISABLED = "disabled"  # none is enabled
    TRIED = "tried"  # this request already tried every eligible one
    QUEUED = "queued"  # older requests of the fleet wait and go first
    # Else what blocks the most sessions (a tie: the first in this order, that of SessionState):
    OPEN = "open"  # their circuit breaker is open
    COOLING = "cooling"  # after a 429
    QUOTA = "quota"  # at an rpm or tpm budget
    BUSY = "busy"  # at their concurrency limit or probing: one may free up any moment


class DisableReason(StrEnum):
    """Disable reasons the broker sets itself; an operator's reason is any other word."""

    AUTH = "auth"  # a 401/403 the credential earned
    DRAIN = "drain"  # an operator's drain: no new leases, those out finish
    OPERATOR = "operator"  # the default reason of an operator's disable


class LeaseStatus(StrEnum):
    """What a release came to (``Released.status``)."""

    RELEASED = "released"  # the lease was live
    LATE = "late"  # it had expired; the outcome still counts
    DUPLICATE = "duplicate"  # released before; nothing changed
    UNKNOWN = "unknown"  # no such lease is remembered (raised as LeaseError by Pool.release)
