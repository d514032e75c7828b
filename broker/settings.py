"""The broker's typed settings. Built from the environment by the one module that reads it
(``proxy.config.settings``); the broker itself never looks at the environment."""

from __future__ import annotations

from dataclasses import dataclass, field

from broker.constants import (
    DEFAULT_BREAKER_FAILURE_RATIO,
    DEFAULT_BREAKER_MIN_CALLS,
    DEFAULT_BREAKER_THRESHOLD,
    DEFAULT_BREAKER_TIMEOUT_MAX_MS,
    DEFAULT_BREAKER_TIMEOUT_MS,
    DEFAULT_BREAKER_WINDOW,
    DEFAULT_CLAIM_TTL_MS,
    DEFAULT_HALF_OPEN_PROBES,
    DEFAULT_LEASE_TTL_MS,
    DEFAULT_POOL,
    DEFAULT_RATE_LIMIT_COOLDOWN_MAX_MS,
    DEFAULT_RATE_LIMIT_COOLDOWN_MS,
    DEFAULT_SENTINEL_MASTER,
)
from broker.selection import Strategy


@dataclass(frozen=True, slots=True, kw_only=True)
class BrokerSettings:
    """How a replica reaches the store and leases sessions. Durations in integer milliseconds.

    The store's topology: standalone (``redis_url``), Sentinel (``redis_sentinels``: the master's
    address comes from them; ``redis_url``, if given, only lends its user, password, database and
    TLS) or Redis Cluster (``redis_cluster``: ``redis_url`` names any node). Without any of them
    the embedded in-process store runs.
    """

    #: ``redis://``, ``rediss://`` or ``unix://`` URL; None runs the embedded in-process store.
    #: Not in the repr: it may carry a password.
    redis_url: str | None = field(default=None, repr=False)
    #: Sentinel addresses (host, port); not empty selects Sentinel.
    redis_sentinels: tuple[tuple[str, int], ...] = ()
    #: The name the sentinels monitor the master under.
    redis_sentinel_master: str = DEFAULT_SENTINEL_MASTER
    #: Password of the sentinels themselves (their ``requirepass``), when they have one.
    redis_sentinel_password: str | None = field(default=None, repr=False)
    #: ``redis_url`` is one node of a Redis Cluster; the client discovers the others.
    redis_cluster: bool = False
    pool: str = DEFAULT_POOL
    strategy: Strategy = Strategy.HEALTH
    #: Hash slots the pool is spread over (broker/shards.py); 1 keeps it in one.
    shards: int = 1
    lease_ttl_ms: int = DEFAULT_LEASE_TTL_MS
    rate_limit_cooldown_ms: int = DEFAULT_RATE_LIMIT_COOLDOWN_MS
    rate_limit_cooldown_max_ms: int = DEFAULT_RATE_LIMIT_COOLDOWN_MAX_MS
    #: Learn a rate per session from header-less 429s and rate-limit headers, and cool such a
    #: 429 with a short probe (rate_limit_cooldown_ms its cap); False keeps the flat cooldown.
    rate_learning: bool = True
    #: How long a replica's claim on its configured sessions lasts unless renewed (see sync).
    claim_ttl_ms: int = DEFAULT_CLAIM_TTL_MS
    #: Consecutive server/network/timeout failures that open a session's breaker; 0: no breaker.
    breaker_threshold: int = DEFAULT_BREAKER_THRESHOLD
    breaker_timeout_ms: int = DEFAULT_BREAKER_TIMEOUT_MS
    breaker_timeout_max_ms: int = DEFAULT_BREAKER_TIMEOUT_MAX_MS
    #: The failure-rate trigger: over the last ``breaker_window`` calls (successes and
    #: failures), once ``breaker_min_calls`` were made, a failure ratio >= this opens it too.
    breaker_window: int = DEFAULT_BREAKER_WINDOW
    breaker_min_calls: int = DEFAULT_BREAKER_MIN_CALLS
    breaker_failure_ratio: float = DEFAULT_BREAKER_FAILURE_RATIO
    half_open_probes: int = DEFAULT_HALF_OPEN_PROBES
    #: Socket timeout for each Redis command and connect (seconds).
    redis_timeout_s: float = 2.0
