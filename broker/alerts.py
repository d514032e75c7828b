"""Fleet alerts, decided in the store so that each start and each end of an alert is seen by
exactly one replica, however many check (see ``lua/alerts.lua``).

The replicas add their own upstream outcomes to a shared tally on each check, which gives the
fleet's error rate over a window without any per-request cost.
"""

from __future__ import annotations

from dataclasses import dataclass

from broker.constants import ALERT_BUCKET_MS, ALERT_MIN_ATTEMPTS, OPS_SET_LIMIT
from broker.pool import Pool
from broker.replies import AlertChange

__all__ = ["AlertChange", "AlertRules", "check_alerts"]


@dataclass(frozen=True, slots=True)
class AlertRules:
    """When the fleet-wide alerts fire: the error rate over a window (ms) above a threshold."""

    error_rate: float
    window_ms: int
    bucket_ms: int = ALERT_BUCKET_MS
    min_attempts: int = ALERT_MIN_ATTEMPTS
    set_limit: int = OPS_SET_LIMIT


async def check_alerts(
    pool: Pool, rules: AlertRules, *, attempts: int, errors: int
) -> list[AlertChange]:
    """Report ``attempts`` and ``errors`` (since this replica's last check), and get the alerts
    that started or ended with this check: only this replica sees these changes."""
    return await pool.gateway.alerts(
        attempts=attempts,
        errors=errors,
        bucket_ms=rules.bucket_ms,
        window_ms=max(rules.window_ms, rules.bucket_ms),
        error_rate=rules.error_rate,
        min_attempts=rules.min_attempts,
        set_limit=rules.set_limit,
    )
