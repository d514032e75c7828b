"""session-broker's library: lease upstream credentials ("sessions") from a pool kept in Redis.

Every decision (which session is free, cooldowns, concurrency, health) is one atomic Lua script,
so it holds for a whole fleet of replicas sharing one Redis. No HTTP here; see ``proxy``.
"""

from broker.errors import (
    BrokerError,
    ConfigError,
    LeaseError,
    NoSessionAvailable,
    QueueFull,
    StoreError,
    UnknownSession,
)
from broker.keys import PoolKeys
from broker.leases import Lease, Outcome, Release, Released, Ticket
from broker.pool import Pool
from broker.queue import WaitQueue
from broker.selection import Strategy
from broker.sessions import Session, load_sessions, session_id_for
from broker.settings import BrokerSettings
from broker.shards import ShardedPool, open_pool
from broker.store import open_store

__all__ = [
    "BrokerError",
    "BrokerSettings",
    "ConfigError",
    "Lease",
    "LeaseError",
    "NoSessionAvailable",
    "Outcome",
    "Pool",
    "PoolKeys",
    "QueueFull",
    "Release",
    "Released",
    "Session",
    "ShardedPool",
    "StoreError",
    "Strategy",
    "Ticket",
    "UnknownSession",
    "WaitQueue",
    "load_sessions",
    "open_pool",
    "open_store",
    "session_id_for",
]
