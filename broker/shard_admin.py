"""Operating a pool spread over shards (broker/shards.py) as the one pool it is: the reads add up
or join the shards' own (``PoolAdmin``'s, each asked concurrently), and an action on a session
goes to the shard it lives in. An operator sees one pool: the admin API, ``status``, the census
behind the metrics, the health summary, snapshots and alerts all stand on this.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from typing import TypeVar

from broker.admin import Census, PoolAdmin, PoolSummary, SessionView, TierCount, UnitTotals
from broker.constants import OPS_SET_LIMIT
from broker.errors import UnknownSession
from broker.pool import Pool
from broker.shard_layout import shard_of
from broker.shards import AnyPool, ShardedPool

__all__ = ["AnyAdmin", "ShardedAdmin", "merge_census", "open_admin"]

_T = TypeVar("_T")


def _add(into: dict[str, int], counts: dict[str, int]) -> None:
    for name, count in counts.items():
        into[name] = into.get(name, 0) + count


def _tiers(parts: Iterable[list[TierCount]]) -> list[TierCount]:
    """Tiers of several shards by priority, best first: sizes added (unknown if unknown in any
    shard), eligible sessions added."""
    merged: dict[int, TierCount] = {}
    for tiers in parts:
        for tier in tiers:
            seen = merged.get(tier.priority)
            if seen is None:
                merged[tier.priority] = TierCount(
                    priority=tier.priority, sessions=tier.sessions, available=tier.available
                )
                continue
            seen.available += tier.available
            if seen.sessions is not None and tier.sessions is not None:
                seen.sessions += tier.sessions
            else:
                seen.sessions = None
    return [merged[p] for p in sorted(merged, reverse=True)]


def merge_census(parts: list[Census]) -> Census:
    """One census for the shards' censuses: counts added, breakers and budgets joined (a
    session lives in one shard), the latest store clock."""
    sessions: dict[str, int] = {}
    sources: dict[str, int] = {}
    for part in parts:
        _add(sessions, part.sessions)
        _add(sources, part.rate_sources)
    return Census(
        now_ms=max(part.now_ms for part in parts),
        sessions=sessions,
        leases=sum(part.leases for part in parts),
        breakers={k: v for part in parts for k, v in part.breakers.items()},
        tiers=_tiers(part.tiers for part in parts),
        units={k: v for part in parts for k, v in part.units.items()},
        sessions_read=sum(part.sessions_read for part in parts),
        rate_sources=dict(sorted(sources.items())),
    )


class ShardedAdmin:
    """Operator reads and actions on a sharded pool; the surface of ``PoolAdmin``."""

    def __init__(self, pool: ShardedPool) -> None:
        self.pool = pool
        self.redis = pool.redis
        #: Each shard's own admin, in shard order.
        self.shards = [PoolAdmin(shard) for shard in pool.shards]

    async def _each(self, call: Callable[[PoolAdmin], Awaitable[_T]]) -> list[_T]:
        return list(await asyncio.gather(*(call(shard) for shard in self.shards)))

    def _of(self, session_id: str) -> PoolAdmin:
        return self.shards[shard_of(session_id, self.pool.count)]

    async def now_ms(self) -> int:
        return await self.shards[0].now_ms()

    async def tidy(self) -> None:
        await self._each(PoolAdmin.tidy)

    async def session_ids(self) -> list[str]:
        """Every session, shard by shard, each shard's in configuration order."""
        return [sid for ids in await self._each(PoolAdmin.session_ids) for sid in ids]

    async def sessions(self) -> list[SessionView]:
        return [view for views in await self._each(PoolAdmin.sessions) for view in views]

    async def session(self, session_id: str) -> SessionView:
        try:
            return await self._of(session_id).session(session_id)
        except UnknownSession:
            raise UnknownSession(f"pool {self.pool.name!r} has no session {session_id!r}") from None

    async def census(self, *, limit: int = OPS_SET_LIMIT) -> Census:
        """The shards' censuses added up (each reads at most ``limit`` per set: see Census)."""
        return merge_census(await self._each(lambda shard: shard.census(limit=limit)))

    async def summary(self) -> PoolSummary:
        parts = await self._each(PoolAdmin.summary)
        census = merge_census(
            [
                Census(
                    now_ms=p.now_ms,
                    sessions=p.sessions,
                    leases=p.leases,
                    breakers=p.breakers,
                    tiers=p.tiers,
                    units={},
                    sessions_read=p.sessions_read,
                    rate_sources=p.rate_sources,
                )
                for p in parts
            ]
        )
        budgets = [p.units for p in parts if p.units is not None]
        alerts: dict[str, int] = {}
        for part in parts:
            for name, since in part.alerts.items():
                alerts[name] = min(since, alerts.get(name, since))
        if "all_rate_limited" in alerts and len(parts) > sum(
            "all_rate_limited" in p.alerts for p in parts
        ):
            del alerts["all_rate_limited"]  # one shard's, not the pool's (broker/alerts.py)
        return PoolSummary(
            pool=self.pool.name,
            now_ms=census.now_ms,
            strategy=parts[0].strategy,
            sessions=census.sessions,
            leases=census.leases,
            breakers=census.breakers,
            tiers=census.tiers,
            units=UnitTotals(
                sessions=sum(b.sessions for b in budgets),
                tpm=sum(b.tpm for b in budgets),
                available=sum(b.available for b in budgets),
            )
            if budgets
            else None,
            rate_sources=census.rate_sources,
            sessions_read=census.sessions_read,
            alerts=dict(sorted(alerts.items())),
        )

    async def enable(self, session_id: str) -> SessionView:
        return await self._of(session_id).enable(session_id)

    async def disable(self, session_id: str, reason: str = "operator") -> SessionView:
        return await self._of(session_id).disable(session_id, reason)

    async def drain(self, session_id: str) -> SessionView:
        return await self._of(session_id).drain(session_id)

    async def reset(self, session_id: str) -> SessionView:
        return await self._of(session_id).reset(session_id)

    async def set_weight(self, session_id: str, weight: float | None) -> SessionView:
        return await self._of(session_id).set_weight(session_id, weight)

    async def summary_turn(
        self, requests: int, *, interval_ms: int, every_requests: int, min_gap_ms: int
    ) -> tuple[bool, int]:
        """Whose turn the health summary is: kept by the first shard for the whole pool."""
        return await self.shards[0].summary_turn(
            requests, interval_ms=interval_ms, every_requests=every_requests, min_gap_ms=min_gap_ms
        )


#: An operator's handle on a pool, spread over shards or not.
AnyAdmin = PoolAdmin | ShardedAdmin


def open_admin(pool: AnyPool) -> AnyAdmin:
    """The admin of ``pool``: a ``PoolAdmin`` for one hash tag, a ``ShardedAdmin`` for more."""
    if isinstance(pool, Pool):
        return PoolAdmin(pool)
    return ShardedAdmin(pool)
