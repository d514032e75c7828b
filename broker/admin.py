"""Operating a pool: what an operator reads (its sessions, a summary) and what they do (enable,
disable, drain, reset, weight). The admin API and the operator CLI both stand on this.

Reads are plain commands; every change is a Lua script (``lua/``, through the pool's gateway)
that recomputes the session's state with the shared ``refresh``, so it is atomic and holds for the
whole fleet at once.

What a unit (tpm) budget has left is asked of the store (``lua/units.lua``): the scripts' own GCRA
arithmetic (``units_left`` in ``lua/common.lua``) answers, at the store's clock, so an operator
never sees a figure the scripts would not decide by. It costs a round trip only when some session
read has a tpm.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any

import msgspec

from broker.constants import OPS_SET_LIMIT
from broker.errors import UnknownSession
from broker.events import operator_action
from broker.gateway import store_call
from broker.pool import Pool
from broker.states import BreakerState, DisableReason, SessionState

__all__ = [
    "OUTCOMES",
    "Census",
    "PoolAdmin",
    "PoolSummary",
    "SessionView",
    "TierCount",
    "UnitBudget",
    "UnitTotals",
]

#: Outcomes counted per session (``n_<outcome>`` in its hash).
OUTCOMES = ("success", "rate_limited", "auth", "server", "network", "timeout", "other", "unused")
#: Disable reasons that mean something else: set by a 401/403, or by a drain.
RESERVED_REASONS = frozenset({DisableReason.AUTH, DisableReason.DRAIN})


class SessionView(msgspec.Struct, kw_only=True):
    """One session as an operator sees it: ids and state, never a secret. Times are store ms.

    ``state`` is the stored state, except that a drained session shows ``draining`` while
    leases are still out on it and ``drained`` once none is. ``units`` counts every unit charged
    so far; ``units_available`` is what its ``tpm`` budget has left now (None without a tpm).
    ``quota_until_ms``: while its state is ``quota``, when its pace and unit budget admit it again.
    """

    id: str
    state: str
    disabled_reason: str | None
    disabled_at_ms: int | None
    cooldown_until_ms: int
    breaker: str
    breaker_until_ms: int
    in_flight: int
    max_concurrency: int | None
    weight: float
    weight_override: float | None
    rpm: float | None
    #: The rate the session is paced at (requests a minute; None: unpaced), where it came from
    #: (configured, header, learned) and when it last went down (docs/learning.md).
    rate_rpm: float | None
    rate_source: str | None
    rate_decreased_at_ms: int | None
    priority: int
    tpm: int | None
    units: int
    units_available: int | None
    quota_until_ms: int | None = None
    health: float
    success_rate: float
    latency_ms: int | None
    last_used_ms: int | None
    last_error: str | None
    last_error_at_ms: int | None
    outcomes: dict[str, int]
    cooldowns: int
    leases: int
    leases_expired: int


class TierCount(msgspec.Struct, kw_only=True):
    """One priority tier: its sessions and those of them eligible now.

    ``sessions`` is None when the pool has more sessions than one census reads (``limit``):
    then only ``available`` (an O(1) count of the tier's eligible set) is exact.
    """

    priority: int
    sessions: int | None
    available: int


class UnitBudget(msgspec.Struct, kw_only=True):
    """One session's unit budget: units per minute, and units it has left now."""

    tpm: int
    available: int


class UnitTotals(msgspec.Struct, kw_only=True):
    """The unit budgets of the sessions that have one, added up."""

    sessions: int
    tpm: int
    available: int


class Census(msgspec.Struct, kw_only=True):
    """The pool's counts by state and by priority tier, its sessions whose breaker is not
    closed, and the unit budgets of its sessions that have a tpm.

    Cheap by construction, in two round trips: a fixed number of O(1) commands (ZCARD/SCARD),
    at most ``limit`` ids per breaker state, the tiers (few) and the first ``limit`` session
    ids; then one ZCARD per tier and one HMGET of three fields per session read. ``tiers``
    (best first) and ``units`` cover those ``sessions_read`` sessions, in configuration order:
    the whole pool unless it has more than ``limit``.
    """

    now_ms: int
    sessions: dict[str, int]
    leases: int
    breakers: dict[str, str]
    tiers: list[TierCount]
    units: dict[str, UnitBudget]
    sessions_read: int
    #: Sessions by the source of their rate (configured, header, learned; none: unpaced).
    rate_sources: dict[str, int] = msgspec.field(default_factory=dict)


class PoolSummary(msgspec.Struct, kw_only=True):
    """The whole pool at a glance: counts by state and by tier (best first), live leases, the
    unit budgets added up (None when no session has a tpm), and the alerts firing."""

    pool: str
    now_ms: int
    strategy: str | None
    sessions: dict[str, int]
    leases: int
    breakers: dict[str, str]
    tiers: list[TierCount]
    units: UnitTotals | None
    sessions_read: int
    alerts: dict[str, int]
    #: Sessions by the source of their rate, as Census has them.
    rate_sources: dict[str, int] = msgspec.field(default_factory=dict)


def _int(value: str | None, default: int = 0) -> int:
    return default if value in (None, "") else int(float(value))


async def _read(pending: Awaitable[Any]) -> Any:
    return await store_call("read", pending)


def _ms(seconds: Any, microseconds: Any) -> int:
    """A TIME reply in ms."""
    return int(seconds) * 1000 + int(microseconds) // 1000


def _opt_int(value: str | None) -> int | None:
    return None if value in (None, "") else int(float(value))


def _opt_float(value: str | None) -> float | None:
    return None if value in (None, "") else float(value)


def view(
    session_id: str, h: dict[str, str], *, units_left: int | None, quota_at: float | None = None
) -> SessionView:
    """A session's view from its hash (as ``HGETALL`` returns it), what its unit budget has
    left (``lua/units.lua``; None without a tpm) and its score in the quota set (None: not in
    it)."""
    state = h.get("state", "unknown")
    reason = h.get("disabled_reason") or None
    in_flight = _int(h.get("in_flight"))
    if state == SessionState.DISABLED and reason == DisableReason.DRAIN:
        state = "draining" if in_flight > 0 else "drained"
    max_concurrency = _int(h.get("max_concurrency"))
    rpm = _opt_float(h.get("rpm"))
    tpm = _int(h.get("tpm")) or None
    return SessionView(
        id=session_id,
        state=state,
        disabled_reason=reason,
        disabled_at_ms=_opt_int(h.get("disabled_at")),
        cooldown_until_ms=_int(h.get("cooldown_until")),
        breaker=h.get("breaker", BreakerState.CLOSED),
        breaker_until_ms=_int(h.get("breaker_until")),
        in_flight=in_flight,
        max_concurrency=max_concurrency or None,
        weight=float(h.get("weight") or 1),
        weight_override=_opt_float(h.get("weight_override")),
        rpm=rpm or None,
        rate_rpm=_opt_float(h.get("rate_rpm")),
        rate_source=h.get("rate_source") or None,
        rate_decreased_at_ms=_opt_int(h.get("rate_decreased_at")),
        priority=_int(h.get("priority")),
        tpm=tpm,
        units=_int(h.get("units")),
        units_available=units_left,
        quota_until_ms=None if quota_at is None or state != "quota" else int(quota_at),
        health=float(h.get("health") or 1),
        success_rate=float(h.get("success_rate") or 1),
        latency_ms=_opt_int(h.get("latency_ms")),
        last_used_ms=_opt_int(h.get("last_used")),
        last_error=h.get("last_error") or None,
        last_error_at_ms=_opt_int(h.get("last_error_at")),
        outcomes={name: _int(h.get(f"n_{name}")) for name in OUTCOMES},
        cooldowns=_int(h.get("cooldowns")),
        leases=_int(h.get("leases")),
        leases_expired=_int(h.get("leases_expired")),
    )


class PoolAdmin:
    """Operator reads and actions on one pool, through the pool's own store client."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.redis = pool.redis
        self.keys = pool.keys
        self.gateway = pool.gateway

    async def now_ms(self) -> int:
        seconds, microseconds = await _read(self.redis.time())
        return _ms(seconds, microseconds)

    async def tidy(self) -> None:
        """Bring the pool up to date before reading it (lua/housekeeping.lua): in a quiet pool
        nothing else ends the cooldowns and breaker timeouts that have run out."""
        await self.gateway.housekeeping()

    async def session_ids(self) -> list[str]:
        """Every session of the pool, in configuration order."""
        ids: list[str] = await _read(self.redis.zrange(self.keys.members, 0, -1))
        return ids

    async def sessions(self) -> list[SessionView]:
        """Every session's view, in configuration order: one pipelined HGETALL per session
        (and the quota set's deadlines)."""
        await self.tidy()
        ids = await self.session_ids()
        return await self._views(ids)

    async def _views(self, ids: list[str]) -> list[SessionView]:
        """Views of ``ids``: their hashes and quota deadlines in one round trip, then what the
        unit budgets of those with a tpm have left, in another (only when there are such)."""
        if not ids:
            return []
        pipe = self.redis.pipeline(transaction=False)
        for session_id in ids:
            pipe.hgetall(self.keys.session(session_id))
        # Quota deadlines: one session's score, or the quota set whole (one command, and it
        # holds only the sessions in quota), rather than a ZSCORE per session.
        if len(ids) == 1:
            pipe.zscore(self.keys.quota, ids[0])
        else:
            pipe.zrange(self.keys.quota, 0, -1, withscores=True)
        *hashes, deadlines = await _read(pipe.execute())
        quota = {ids[0]: deadlines} if len(ids) == 1 else dict(deadlines)
        budgets = [sid for sid, h in zip(ids, hashes, strict=True) if _int(h.get("tpm"))]
        left = await self._units_left(budgets, 0)
        return [
            view(session_id, h, units_left=left.get(session_id), quota_at=quota.get(session_id))
            for session_id, h in zip(ids, hashes, strict=True)
        ]

    async def _units_left(self, ids: list[str], at_ms: int) -> dict[str, int | None]:
        """What the unit budgets of ``ids`` have left at ``at_ms`` (0: the store's now)."""
        if not ids:
            return {}
        return (await self.gateway.units(session_ids=ids, at_ms=at_ms)).left

    async def session(self, session_id: str) -> SessionView:
        """One session's view; UnknownSession when the pool has no such member."""
        await self.tidy()
        if await _read(self.redis.zscore(self.keys.members, session_id)) is None:
            raise UnknownSession(f"pool {self.pool.name!r} has no session {session_id!r}")
        (found,) = await self._views([session_id])
        return found

    async def census(self, *, limit: int = OPS_SET_LIMIT) -> Census:
        """Counts by state and by tier, the non-closed breakers (at most ``limit`` of each
        kind) and the unit budgets (of the first ``limit`` sessions), after a housekeeping
        pass. Two round trips, and a third when some session has a tpm; see Census."""
        await self.tidy()
        pipe = self.redis.pipeline(transaction=False)
        keys = self.keys
        for key in (keys.members, keys.avail, keys.cooling, keys.open, keys.quota):
            pipe.zcard(key)
        pipe.scard(self.keys.disabled)
        pipe.scard(self.keys.half_open)
        pipe.zcard(self.keys.leases)
        pipe.zrange(self.keys.open, 0, limit - 1)
        # SRANDMEMBER with a positive count: the whole set when it is smaller than the count.
        pipe.srandmember(self.keys.half_open, limit)
        pipe.zrange(self.keys.tiers, 0, limit - 1)
        pipe.zrange(self.keys.members, 0, limit - 1)
        # TIME beside the pipeline, not in it: a cluster client refuses TIME in a pipeline.
        (seconds, micro), replies = await asyncio.gather(
            _read(self.redis.time()), _read(pipe.execute())
        )
        total, available, cooling, open_, quota, disabled, half_open = replies[:7]
        leases, open_ids, half_open_ids, eligible_tiers, ids = replies[7:]
        counts = {
            "total": total,
            "available": available,
            "cooling": cooling,
            "open": open_,
            "half_open": half_open,
            "quota": quota,
            "disabled": disabled,
            "busy": max(0, total - available - cooling - open_ - quota - disabled),
        }
        breakers: dict[str, str] = dict.fromkeys(
            sorted(half_open_ids or []), BreakerState.HALF_OPEN
        )
        breakers |= dict.fromkeys(open_ids, BreakerState.OPEN)
        now = _ms(seconds, micro)
        tiers, units, rate_sources = await self._tiers_and_units(
            [int(t) for t in eligible_tiers], ids, now, complete=len(ids) == total
        )
        return Census(
            now_ms=now,
            sessions=counts,
            leases=leases,
            breakers=breakers,
            tiers=tiers,
            units=units,
            rate_sources=rate_sources,
            sessions_read=len(ids),
        )

    async def _tiers_and_units(
        self, eligible: list[int], ids: list[str], now: int, *, complete: bool
    ) -> tuple[list[TierCount], dict[str, UnitBudget], dict[str, int]]:
        """The census's second round trip: each eligible tier's size, and the priority, tpm and
        rate source of each session in ``ids``; then what the unit budgets of those with a tpm
        have left."""
        pipe = self.redis.pipeline(transaction=False)
        for priority in eligible:
            pipe.zcard(self.keys.tier(priority))
        for session_id in ids:
            pipe.hmget(self.keys.session(session_id), "priority", "tpm", "rate_source")
        replies: list[Any] = await _read(pipe.execute()) if eligible or ids else []
        available = dict(zip(eligible, replies[: len(eligible)], strict=True))
        members: dict[int, int] = {}
        tpms: dict[str, int] = {}
        sources: dict[str, int] = {}
        for session_id, (priority, tpm, source) in zip(ids, replies[len(eligible) :], strict=True):
            members[_int(priority)] = members.get(_int(priority), 0) + 1
            sources[source or "none"] = sources.get(source or "none", 0) + 1
            if _int(tpm):
                tpms[session_id] = _int(tpm)
        left = await self._units_left(list(tpms), now)
        units = {
            sid: UnitBudget(tpm=tpm, available=left.get(sid) or 0) for sid, tpm in tpms.items()
        }
        tiers = [
            TierCount(
                priority=priority,
                sessions=members.get(priority, 0) if complete else None,
                available=available.get(priority, 0),
            )
            for priority in sorted(available.keys() | members.keys(), reverse=True)
        ]
        return tiers, units, dict(sorted(sources.items()))

    async def summary(self) -> PoolSummary:
        census = await self.census()
        strategy: str | None = await _read(self.redis.hget(self.keys.pool, "strategy"))
        alerts: dict[str, str] = await _read(self.redis.hgetall(self.keys.alerts))
        budgets = list(census.units.values())
        units = None
        if budgets:
            units = UnitTotals(
                sessions=len(budgets),
                tpm=sum(b.tpm for b in budgets),
                available=sum(b.available for b in budgets),
            )
        return PoolSummary(
            pool=self.pool.name,
            now_ms=census.now_ms,
            strategy=strategy,
            sessions=census.sessions,
            leases=census.leases,
            breakers=census.breakers,
            tiers=census.tiers,
            units=units,
            rate_sources=census.rate_sources,
            sessions_read=census.sessions_read,
            alerts={name: int(since) for name, since in sorted(alerts.items())},
        )

    async def _changed(self, session_id: str, state: SessionState | None) -> SessionView:
        if state is None:
            raise UnknownSession(f"pool {self.pool.name!r} has no session {session_id!r}")
        return await self.session(session_id)

    async def enable(self, session_id: str) -> SessionView:
        """Back into use: clears any disable (an operator's, a drain, or a 401/403's)."""
        return await self._set_disabled(session_id, "")

    async def disable(self, session_id: str, reason: str = "operator") -> SessionView:
        """Out of use for the whole fleet until enabled; leases already out finish."""
        if not reason or reason in RESERVED_REASONS:
            raise ValueError(f"disable reason {reason!r} is empty or reserved")
        return await self._set_disabled(session_id, reason)

    async def drain(self, session_id: str) -> SessionView:
        """No new leases; those out finish. Shown as ``draining``, then ``drained``."""
        return await self._set_disabled(session_id, DisableReason.DRAIN)

    async def _set_disabled(self, session_id: str, reason: str) -> SessionView:
        done = "enabled" if not reason else "drained" if reason == DisableReason.DRAIN else None
        with operator_action(done or "disabled"):
            state = await self.gateway.set_disabled(session_id=session_id, reason=reason)
        return await self._changed(session_id, state)

    async def reset(self, session_id: str) -> SessionView:
        """Clear the cooldown, the breaker and the counters (see lua/reset_session.lua)."""
        state = await self.gateway.reset_session(session_id=session_id)
        return await self._changed(session_id, state)

    async def set_weight(self, session_id: str, weight: float | None) -> SessionView:
        """Override the configured weight (None: back to it); rescored in avail at once."""
        if weight is not None and not 0 < weight <= 1_000_000:
            raise ValueError(f"weight {weight!r} is not in (0, 1000000]")
        state = await self.gateway.set_weight(session_id=session_id, weight=weight)
        return await self._changed(session_id, state)

    async def summary_turn(
        self, requests: int, *, interval_ms: int, every_requests: int, min_gap_ms: int
    ) -> tuple[bool, int]:
        """Whether this replica logs the health summary now (one replica at a time, fleet-wide),
        and the store's time; see lua/summary_turn.lua."""
        turn = await self.gateway.summary_turn(
            requests=requests,
            interval_ms=interval_ms,
            every_requests=every_requests,
            min_gap_ms=min_gap_ms,
        )
        return turn.turn, turn.now_ms
