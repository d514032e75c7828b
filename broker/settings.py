"""The broker's typed settings. Built from the environment by the one module that reads it
(``proxy.settings``); the broker itself never looks at the environment."""

from __future__ import annotations

from dataclasses import dataclass

from broker.constants import (
    DEFAULT_LEASE_TTL_MS,
    DEFAULT_POOL,
    DEFAULT_RATE_LIMIT_COOLDOWN_MAX_MS,
    DEFAULT_RATE_LIMIT_COOLDOWN_MS,
)
from broker.selection import Strategy


@dataclass(frozen=True, slots=True, kw_only=True)
class BrokerSettings:
    """How a replica reaches the store and leases sessions. Durations in integer milliseconds."""

    #: ``redis://``, ``rediss://`` or ``unix://`` URL; None runs the embedded in-process store.
    redis_url: str | None = None
    pool: str = DEFAULT_POOL
    strategy: Strategy = Strategy.HEALTH
    lease_ttl_ms: int = DEFAULT_LEASE_TTL_MS
    rate_limit_cooldown_ms: int = DEFAULT_RATE_LIMIT_COOLDOWN_MS
    rate_limit_cooldown_max_ms: int = DEFAULT_RATE_LIMIT_COOLDOWN_MAX_MS
    #: Socket timeout for each Redis command and connect (seconds).
    redis_timeout_s: float = 2.0
