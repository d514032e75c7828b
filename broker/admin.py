"""Operating a pool: what an operator reads (its sessions, a summary) and what they do (enable,
disable, drain, reset, weight). The admin API and the operator CLI both stand on this.

Reads are plain commands; every change is a Lua script (``lua/``) that recomputes the session's
state with the shared ``refresh``, so it is atomic and holds for the whole fleet at once.

What a unit (tpm) budget has left is computed here from the session's schedule (``unit_tat``)
and the store's clock, with the same per-unit interval as the scripts' (``lua/common.lua``).
"""

from __future__ import annotations

import math
from typing import Any

import msgspec

from broker.constants import OPS_SET_LIMIT, QUOTA_SLACK, UNIT_WINDOW_MS
from broker.errors import UnknownSession
from broker.pool import Pool, _call

__all__ = [
    "OUTCOMES",
    "Census",
    "PoolAdmin",
    "PoolSummary",
    "SessionView",
    "TierCount",
    "UnitBudget",
    "UnitTotals",
    "units_available",
]

#: Outcomes counted per session (``n_<outcome>`` in its hash).
OUTCOMES = ("success", "rate_limited", "auth", "server", "network", "timeout", "other", "unused")
#: Disable reasons that mean something else: set by a 401/403, or by a drain.
RESERVED_REASONS = frozenset({"auth", "drain"})


class SessionView(msgspec.Struct, kw_only=True):
    """One session as an operator sees it: ids and state, never a secret. Times are store ms.

    ``state`` is the stored state, except that a drained session shows ``draining`` while
    leases are still out on it and ``drained`` once none is. ``units`` counts every unit charged
    so far; ``units_available`` is what its ``tpm`` budget has left now (None without a tpm).
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
    priority: int
    tpm: int | None
    units: int
    units_available: int | None
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


def _int(value: str | None, default: int = 0) -> int:
    return default if value in (None, "") else int(float(value))


def _ms(seconds: Any, microseconds: Any) -> int:
    """A TIME reply in ms."""
    return int(seconds) * 1000 + int(microseconds) // 1000


def _opt_int(value: str | None) -> int | None:
    return None if value in (None, "") else int(float(value))


def _opt_float(value: str | None) -> float | None:
    return None if value in (None, "") else float(value)


def units_available(
    tpm: int | None, unit_tat: float, now_ms: int, quota_slack: float = QUOTA_SLACK
) -> int | None:
    """Units a ``tpm`` budget has left at ``now_ms`` (store ms); None without a tpm.

    Each unit takes ``60000/tpm * quota_slack`` ms of the schedule, which may run up to
    UNIT_WINDOW_MS ahead of now (lua/common.lua): what is left is the room before that edge, in
    whole units; 0 while the budget is overdrawn.
    """
    if not tpm:
        return None
    interval_ms = 60_000 / tpm * quota_slack
    room_ms = now_ms + UNIT_WINDOW_MS - max(unit_tat, now_ms)
    return max(0, math.floor(room_ms / interval_ms))


def view(
    session_id: str, h: dict[str, str], *, now_ms: int, quota_slack: float = QUOTA_SLACK
) -> SessionView:
    """A session's view from its hash (as ``HGETALL`` returns it), at the store's ``now_ms``;
    ``quota_slack`` as the pool hash holds it (what the scripts space units by)."""
    state = h.get("state", "unknown")
    reason = h.get("disabled_reason") or None
    in_flight = _int(h.get("in_flight"))
    if state == "disabled" and reason == "drain":
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
        breaker=h.get("breaker", "closed"),
        breaker_until_ms=_int(h.get("breaker_until")),
        in_flight=in_flight,
        max_concurrency=max_concurrency or None,
        weight=float(h.get("weight") or 1),
        weight_override=_opt_float(h.get("weight_override")),
        rpm=rpm or None,
        priority=_int(h.get("priority")),
        tpm=tpm,
        units=_int(h.get("units")),
        units_available=units_available(tpm, float(h.get("unit_tat") or 0), now_ms, quota_slack),
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
        base = self.keys.base
        self._pool_hash, self._members = f"{base}:pool", f"{base}:members"
        self._avail, self._cooling, self._leases = (
            f"{base}:avail",
            f"{base}:cooling",
            f"{base}:leases",
        )
        self._disabled, self._open, self._quota = (
            f"{base}:disabled",
            f"{base}:open",
            f"{base}:quota",
        )
        self._half_open, self._alerts = f"{base}:half_open", f"{base}:alerts"
        self._tiers = f"{base}:tiers"
        assert {self._members, self._half_open, self._alerts, self._tiers} <= set(self.keys.all)

    async def now_ms(self) -> int:
        seconds, microseconds = await _call("read", self.redis.time())
        return _ms(seconds, microseconds)

    async def tidy(self) -> None:
        """Bring the pool up to date before reading it (lua/housekeeping.lua): in a quiet pool
        nothing else ends the cooldowns and breaker timeouts that have run out."""
        await self.pool._run("housekeeping")

    async def session_ids(self) -> list[str]:
        """Every session of the pool, in configuration order."""
        ids: list[str] = await _call("read", self.redis.zrange(self._members, 0, -1))
        return ids

    async def sessions(self) -> list[SessionView]:
        """Every session's view, in configuration order: one pipelined HGETALL per session."""
        await self.tidy()
        ids = await self.session_ids()
        return await self._views(ids)

    async def _views(self, ids: list[str]) -> list[SessionView]:
        """Views of ``ids`` as of the store's clock, read with it in one round trip."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.time()
        pipe.hget(self._pool_hash, "quota_slack")
        for session_id in ids:
            pipe.hgetall(self.keys.session(session_id))
        (seconds, micro), slack, *hashes = await _call("read", pipe.execute())
        now, quota_slack = _ms(seconds, micro), float(slack or QUOTA_SLACK)
        return [
            view(session_id, h, now_ms=now, quota_slack=quota_slack)
            for session_id, h in zip(ids, hashes, strict=True)
        ]

    async def session(self, session_id: str) -> SessionView:
        """One session's view; UnknownSession when the pool has no such member."""
        await self.tidy()
        if await _call("read", self.redis.zscore(self._members, session_id)) is None:
            raise UnknownSession(f"pool {self.pool.name!r} has no session {session_id!r}")
        (found,) = await self._views([session_id])
        return found

    async def census(self, *, limit: int = OPS_SET_LIMIT) -> Census:
        """Counts by state and by tier, the non-closed breakers (at most ``limit`` of each
        kind) and the unit budgets (of the first ``limit`` sessions), after a housekeeping
        pass. Two round trips; see Census for what each reads."""
        await self.tidy()
        pipe = self.redis.pipeline(transaction=False)
        pipe.time()
        for key in (self._members, self._avail, self._cooling, self._open, self._quota):
            pipe.zcard(key)
        pipe.scard(self._disabled)
        pipe.scard(self._half_open)
        pipe.zcard(self._leases)
        pipe.zrange(self._open, 0, limit - 1)
        # SRANDMEMBER with a positive count: the whole set when it is smaller than the count.
        pipe.srandmember(self._half_open, limit)
        pipe.zrange(self._tiers, 0, limit - 1)
        pipe.zrange(self._members, 0, limit - 1)
        pipe.hget(self._pool_hash, "quota_slack")
        replies: list[Any] = await _call("read", pipe.execute())
        (seconds, micro), total, available, cooling, open_, quota, disabled, half_open = replies[:8]
        leases, open_ids, half_open_ids, eligible_tiers, ids, slack = replies[8:]
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
        breakers = dict.fromkeys(sorted(half_open_ids or []), "half_open")
        breakers |= dict.fromkeys(open_ids, "open")
        now = _ms(seconds, micro)
        tiers, units = await self._tiers_and_units(
            [int(t) for t in eligible_tiers],
            ids,
            now,
            float(slack or QUOTA_SLACK),
            complete=len(ids) == total,
        )
        return Census(
            now_ms=now,
            sessions=counts,
            leases=leases,
            breakers=breakers,
            tiers=tiers,
            units=units,
            sessions_read=len(ids),
        )

    async def _tiers_and_units(
        self, eligible: list[int], ids: list[str], now: int, quota_slack: float, *, complete: bool
    ) -> tuple[list[TierCount], dict[str, UnitBudget]]:
        """The census's second round trip: each eligible tier's size, and the priority and unit
        budget of each session in ``ids``."""
        pipe = self.redis.pipeline(transaction=False)
        for priority in eligible:
            pipe.zcard(self.keys.tier(priority))
        for session_id in ids:
            pipe.hmget(self.keys.session(session_id), "priority", "tpm", "unit_tat")
        replies: list[Any] = await _call("read", pipe.execute()) if eligible or ids else []
        available = dict(zip(eligible, replies[: len(eligible)], strict=True))
        members: dict[int, int] = {}
        units: dict[str, UnitBudget] = {}
        for session_id, (priority, tpm, unit_tat) in zip(
            ids, replies[len(eligible) :], strict=True
        ):
            members[_int(priority)] = members.get(_int(priority), 0) + 1
            left = units_available(_int(tpm), float(unit_tat or 0), now, quota_slack)
            if left is not None:
                units[session_id] = UnitBudget(tpm=_int(tpm), available=left)
        tiers = [
            TierCount(
                priority=priority,
                sessions=members.get(priority, 0) if complete else None,
                available=available.get(priority, 0),
            )
            for priority in sorted(available.keys() | members.keys(), reverse=True)
        ]
        return tiers, units

    async def summary(self) -> PoolSummary:
        census = await self.census()
        strategy: str | None = await _call("read", self.redis.hget(self._pool_hash, "strategy"))
        alerts: dict[str, str] = await _call("read", self.redis.hgetall(self._alerts))
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
            sessions_read=census.sessions_read,
            alerts={name: int(since) for name, since in sorted(alerts.items())},
        )

    async def _change(self, operation: str, session_id: str, *args: object) -> SessionView:
        # Pool._run: the same KEYS, the same event handling (logs, transitions) as the lease path.
        (state,) = await self.pool._run(operation, session_id, *args)
        if state == "unknown":
            raise UnknownSession(f"pool {self.pool.name!r} has no session {session_id!r}")
        return await self.session(session_id)

    async def enable(self, session_id: str) -> SessionView:
        """Back into use: clears any disable (an operator's, a drain, or a 401/403's)."""
        return await self._change("set_disabled", session_id, "")

    async def disable(self, session_id: str, reason: str = "operator") -> SessionView:
        """Out of use for the whole fleet until enabled; leases already out finish."""
        if not reason or reason in RESERVED_REASONS:
            raise ValueError(f"disable reason {reason!r} is empty or reserved")
        return await self._change("set_disabled", session_id, reason)

    async def drain(self, session_id: str) -> SessionView:
        """No new leases; those out finish. Shown as ``draining``, then ``drained``."""
        return await self._change("set_disabled", session_id, "drain")

    async def reset(self, session_id: str) -> SessionView:
        """Clear the cooldown, the breaker and the counters (see lua/reset_session.lua)."""
        return await self._change("reset_session", session_id)

    async def set_weight(self, session_id: str, weight: float | None) -> SessionView:
        """Override the configured weight (None: back to it); rescored in avail at once."""
        if weight is not None and not 0 < weight <= 1_000_000:
            raise ValueError(f"weight {weight!r} is not in (0, 1000000]")
        return await self._change("set_weight", session_id, "" if weight is None else repr(weight))

    async def summary_turn(
        self, requests: int, *, interval_ms: int, every_requests: int, min_gap_ms: int
    ) -> tuple[bool, int]:
        """Whether this replica logs the health summary now (one replica at a time, fleet-wide),
        and the store's time; see lua/summary_turn.lua."""
        turn, now = await self.pool._run(
            "summary_turn", requests, interval_ms, every_requests, min_gap_ms
        )
        return bool(int(turn)), int(now)
