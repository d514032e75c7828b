"""The decoded replies of the scripts (``broker/gateway.py``), besides the lease types the broker
already has (a grant is a ``Lease``, a release's answer a ``Released``)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import NamedTuple

from broker.leases import Outcome
from broker.states import Refusal

__all__ = [
    "AlertChange",
    "Ended",
    "Refused",
    "ReleaseCall",
    "SummaryTurn",
    "SyncReply",
    "SyncStep",
    "UnitsLeft",
]


@dataclass(frozen=True, slots=True)
class Refused:
    """No session for this acquire: why, the earliest known moment one may be (store ms, None
    when none is known), the store's clock, and the sessions in each state."""

    reason: Refusal
    earliest_ms: int | None
    now_ms: int
    #: Sessions by state (a SessionState's value): available, cooling, busy, disabled, open,
    #: quota.
    counts: dict[str, int]


@dataclass(frozen=True, slots=True)
class Ended:
    """The lease id belongs to a lease that already ended: an acquire needs a fresh one."""

    lease_id: str


@dataclass(frozen=True, slots=True)
class ReleaseCall:
    """One release as the script takes it: what Pool.release judged from what happened."""

    lease_id: str
    outcome: Outcome
    #: Milliseconds the attempt took; -1 unknown.
    latency_ms: int
    #: On rate_limited the base of an escalating cooldown; else a wait the upstream's headers
    #: asked for; -1 none.
    cooldown_ms: int
    #: A status code or error class for ``last_error``; never a secret.
    detail: str
    #: Units the attempt consumed; None keeps the pre-charge (refunded on ``unused``).
    units: int | None
    #: The 401/403 judgement's facts: the request's kind ('' unknown) and the session that
    #: answered this same request 401/403 before ('' none).
    request_kind: str = ""
    refused_by: str = ""
    #: Rate learning: when the lease was granted (store ms, 0 unknown), whether a rate_limited
    #: cooldown is a wait the upstream stated, and a rate its headers state (rpm; 0 none).
    granted_at_ms: int = 0
    wait_stated: bool = False
    seed_rpm: float = 0.0


class SyncStep(StrEnum):
    """One call of a sync: ``part`` (more sessions follow), ``last`` (the configuration is
    complete), ``renew`` (extend the claim) or ``leave`` (drop it)."""

    PART = "part"
    LAST = "last"
    RENEW = "renew"
    LEAVE = "leave"


class SyncReply(NamedTuple):
    """Sessions in the pool after the call; ``lost``: a renew found its claim expired."""

    size: int
    lost: bool


@dataclass(frozen=True, slots=True)
class AlertChange:
    """Alert ``name`` started (``firing``) or ended (``resolved``); it fired since ``since_ms``.

    Names: ``breaker:<session>``, ``auth:<session>``, ``all_rate_limited``, ``error_rate``.
    """

    name: str
    status: str
    since_ms: int
    detail: str

    @property
    def kind(self) -> str:
        return self.name.partition(":")[0]

    @property
    def session_id(self) -> str | None:
        return self.name.partition(":")[2] or None


class SummaryTurn(NamedTuple):
    """Whether this replica logs the health summary now, and the store's clock."""

    turn: bool
    now_ms: int


class UnitsLeft(NamedTuple):
    """Units each session's tpm budget has left at the store's ``now_ms`` (None: no tpm)."""

    now_ms: int
    left: dict[str, int | None]
