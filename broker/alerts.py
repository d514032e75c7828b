"""Fleet alerts, decided in the store so that each start and each end of an alert is seen by
exactly one replica, however many check (see ``lua/alerts.lua``).

The replicas add their own upstream outcomes to a shared tally on each check, which gives the
fleet's error rate over a window without any per-request cost.

A pool spread over shards (broker/shards.py) is checked shard by shard: a session's alerts
(``breaker:<id>``, ``auth:<id>``) come from the shard it lives in, exactly once as before; the
outcomes are tallied in the first shard, which so decides ``error_rate`` for the whole pool; and
``all_rate_limited`` is the pool's: it starts when the last shard's starts (every shard's every
enabled session cooling or out of quota) and ends when the first shard's ends. The replica that
sees a shard's change reads the other shards' firing alerts to decide: two replicas changing two
shards in the same instant may both announce it (never neither).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from broker.constants import ALERT_BUCKET_MS, ALERT_MIN_ATTEMPTS, OPS_SET_LIMIT
from broker.gateway import store_call
from broker.pool import Pool
from broker.replies import AlertChange
from broker.shards import AnyPool, ShardedPool

__all__ = ["ALL_RATE_LIMITED", "AlertChange", "AlertRules", "check_alerts"]

#: The alert that speaks of the whole pool, besides the error rate.
ALL_RATE_LIMITED = "all_rate_limited"


@dataclass(frozen=True, slots=True)
class AlertRules:
    """When the fleet-wide alerts fire: the error rate over a window (ms) above a threshold."""

    error_rate: float
    window_ms: int
    bucket_ms: int = ALERT_BUCKET_MS
    min_attempts: int = ALERT_MIN_ATTEMPTS
    set_limit: int = OPS_SET_LIMIT


async def _check(pool: Pool, rules: AlertRules, *, attempts: int, errors: int) -> list[AlertChange]:
    return await pool.gateway.alerts(
        attempts=attempts,
        errors=errors,
        bucket_ms=rules.bucket_ms,
        window_ms=max(rules.window_ms, rules.bucket_ms),
        error_rate=rules.error_rate,
        min_attempts=rules.min_attempts,
        set_limit=rules.set_limit,
    )


async def check_alerts(
    pool: AnyPool, rules: AlertRules, *, attempts: int, errors: int
) -> list[AlertChange]:
    """Report ``attempts`` and ``errors`` (since this replica's last check), and get the alerts
    that started or ended with this check: only this replica sees these changes."""
    if isinstance(pool, Pool):
        return await _check(pool, rules, attempts=attempts, errors=errors)
    return await _check_shards(pool, rules, attempts=attempts, errors=errors)


async def _check_shards(
    pool: ShardedPool, rules: AlertRules, *, attempts: int, errors: int
) -> list[AlertChange]:
    first, *others = pool.shards
    per_shard = await asyncio.gather(
        _check(first, rules, attempts=attempts, errors=errors),
        *(_check(shard, rules, attempts=0, errors=0) for shard in others),
    )
    changes = []
    for k, shard_changes in enumerate(per_shard):
        for change in shard_changes:
            if change.name != ALL_RATE_LIMITED or await _pool_wide(pool, k, change):
                changes.append(change)
    return changes


async def _pool_wide(pool: ShardedPool, k: int, change: AlertChange) -> bool:
    """Whether shard ``k``'s all_rate_limited change starts or ends the pool's: only when every
    other shard's fires."""
    pipe = pool.redis.pipeline(transaction=False)
    for other, shard in enumerate(pool.shards):
        if other != k:
            pipe.hexists(shard.keys.alerts, ALL_RATE_LIMITED)
    firing: list[bool] = await store_call("alerts", pipe.execute())
    return all(firing)
