"""Leases: a session borrowed for one upstream attempt, and what happened on it."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from broker.states import LeaseStatus


class Outcome(StrEnum):
    """What one upstream attempt came to; the predecessor's error categories."""

    SUCCESS = "success"  # 2xx/3xx, or another 4xx: the client's fault, not the session's
    RATE_LIMITED = "rate_limited"  # 429, or headers saying nothing remains
    AUTH = "auth"  # 401/403: the session is suspect, or disabled on evidence (lua/release.lua)
    SERVER = "server"  # 5xx
    NETWORK = "network"  # connection refused, reset, DNS
    TIMEOUT = "timeout"
    OTHER = "other"
    UNUSED = "unused"  # the lease was not used for a request (no penalty, no health change)


@dataclass(frozen=True, slots=True)
class Lease:
    """One session borrowed until ``expires_at_ms`` (store time) unless renewed or released."""

    pool: str
    session_id: str
    lease_id: str
    expires_at_ms: int
    #: A half-open breaker's probe: its outcome decides whether the breaker closes.
    probe: bool = False
    #: When the store granted it (store ms; 0 unknown): a 429 of a lease granted before the
    #: session's last rate decrease does not decrease it again.
    granted_at_ms: int = 0


@dataclass(frozen=True, slots=True)
class Release:
    """A release to make: ``lease`` ended with ``outcome``; the other fields as ``Pool.release``
    takes them (``Pool.release_many`` takes several)."""

    lease: Lease
    outcome: Outcome
    latency_ms: int = -1
    retry_after_ms: int | None = None
    exhausted_ms: int | None = None
    detail: str = ""
    units: int | None = None
    #: The 401/403 judgement's facts (docs/how-it-works.md): the request's kind (a hash of its
    #: method and first path segments, never the path; '' unknown), and the session of this pool
    #: that answered this same request 401/403 before ('' none).
    request_kind: str = ""
    refused_by: str = ""
    #: A rate the answer's rate-limit headers state (requests a minute); None: none stated.
    seed_rpm: float | None = None


@dataclass(frozen=True, slots=True)
class Released:
    """The store's answer to a release.

    ``status`` is ``released`` (the lease was live), ``late`` (it had expired, the outcome still
    counted) or ``duplicate`` (released before; nothing changed). ``cooldown_until_ms`` is the
    session's cooldown deadline after a ``rate_limited`` outcome, else 0. ``cooldown_started``:
    this release started that cooldown (the session was not cooling before it); of a wave of
    429s, from however many replicas, exactly one release says so.
    """

    status: LeaseStatus
    session_id: str
    cooldown_until_ms: int
    cooldown_started: bool = False


@dataclass(slots=True)
class Ticket:
    """A waiting request's place in the fleet-wide queue: the oldest ``arrival_ms`` (store time,
    learned from its first refusal) goes first; a ticket not renewed within ``ttl_ms`` lapses."""

    id: str
    ttl_ms: int
    arrival_ms: int = 0
    #: Whether the store holds the ticket now (it does after a refusal, not after a grant).
    held: bool = False
    #: The shards of a pool spread over several that hold it (broker/shards.py).
    shards: set[int] = field(default_factory=set)
