"""Operating a pool: what an operator reads (its sessions, a summary) and what they do (enable,
disable, drain, reset, weight). The admin API and the operator CLI both stand on this.

Reads are plain commands; every change is a Lua script (``lua/``) that recomputes the session's
state with the shared ``refresh``, so it is atomic and holds for the whole fleet at once.
"""

from __future__ import annotations

from typing import Any

import msgspec

from broker.errors import UnknownSession
from broker.pool import Pool, _call

__all__ = ["OUTCOMES", "Census", "PoolAdmin", "PoolSummary", "SessionView"]

#: Outcomes counted per session (``n_<outcome>`` in its hash).
OUTCOMES = ("success", "rate_limited", "auth", "server", "network", "timeout", "other", "unused")
#: Disable reasons that mean something else: set by a 401/403, or by a drain.
RESERVED_REASONS = frozenset({"auth", "drain"})


class SessionView(msgspec.Struct, kw_only=True):
    """One session as an operator sees it: ids and state, never a secret. Times are store ms.

    ``state`` is the stored state, except that a drained session shows ``draining`` while
    leases are still out on it and ``drained`` once none is.
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


class Census(msgspec.Struct, kw_only=True):
    """The pool's counts by state, and its sessions whose breaker is not closed.

    Cheap by construction: a fixed number of O(1) commands (ZCARD/SCARD) plus at most ``limit``
    ids per breaker state, in one round trip.
    """

    now_ms: int
    sessions: dict[str, int]
    leases: int
    breakers: dict[str, str]


class PoolSummary(msgspec.Struct, kw_only=True):
    """The whole pool at a glance: counts by state, live leases, and the alerts firing."""

    pool: str
    now_ms: int
    strategy: str | None
    sessions: dict[str, int]
    leases: int
    breakers: dict[str, str]
    alerts: dict[str, int]


def _int(value: str | None, default: int = 0) -> int:
    return default if value in (None, "") else int(float(value))


def _opt_int(value: str | None) -> int | None:
    return None if value in (None, "") else int(float(value))


def _opt_float(value: str | None) -> float | None:
    return None if value in (None, "") else float(value)


def view(session_id: str, h: dict[str, str]) -> SessionView:
    """A session's view from its hash (as ``HGETALL`` returns it)."""
    state = h.get("state", "unknown")
    reason = h.get("disabled_reason") or None
    in_flight = _int(h.get("in_flight"))
    if state == "disabled" and reason == "drain":
        state = "draining" if in_flight > 0 else "drained"
    max_concurrency = _int(h.get("max_concurrency"))
    rpm = _opt_float(h.get("rpm"))
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
        assert {self._members, self._half_open, self._alerts} <= set(self.keys.all)

    async def now_ms(self) -> int:
        seconds, microseconds = await _call("read", self.redis.time())
        return int(seconds) * 1000 + int(microseconds) // 1000

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
        hashes = await self._hashes(ids)
        return [view(session_id, h) for session_id, h in zip(ids, hashes, strict=True)]

    async def _hashes(self, ids: list[str]) -> list[dict[str, str]]:
        if not ids:
            return []
        pipe = self.redis.pipeline(transaction=False)
        for session_id in ids:
            pipe.hgetall(self.keys.session(session_id))
        hashes: list[dict[str, str]] = await _call("read", pipe.execute())
        return hashes

    async def session(self, session_id: str) -> SessionView:
        """One session's view; UnknownSession when the pool has no such member."""
        await self.tidy()
        if await _call("read", self.redis.zscore(self._members, session_id)) is None:
            raise UnknownSession(f"pool {self.pool.name!r} has no session {session_id!r}")
        state: dict[str, str] = await _call(
            "read", self.redis.hgetall(self.keys.session(session_id))
        )
        return view(session_id, state)

    async def census(self, *, limit: int = 500) -> Census:
        """Counts by state and the non-closed breakers (at most ``limit`` of each kind), after a
        housekeeping pass."""
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
        replies: list[Any] = await _call("read", pipe.execute())
        (seconds, micro), total, available, cooling, open_, quota, disabled, half_open = replies[:8]
        leases, open_ids, half_open_ids = replies[8:]
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
        now = int(seconds) * 1000 + int(micro) // 1000
        return Census(now_ms=now, sessions=counts, leases=leases, breakers=breakers)

    async def summary(self) -> PoolSummary:
        census = await self.census()
        strategy: str | None = await _call("read", self.redis.hget(self._pool_hash, "strategy"))
        alerts: dict[str, str] = await _call("read", self.redis.hgetall(self._alerts))
        return PoolSummary(
            pool=self.pool.name,
            now_ms=census.now_ms,
            strategy=strategy,
            sessions=census.sessions,
            leases=census.leases,
            breakers=census.breakers,
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
