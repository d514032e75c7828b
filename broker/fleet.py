"""Who serves a pool right now, for operators: the replicas whose claims on it are live (the
``claims`` set the sync script keeps: replica id -> claim deadline) and how many of them have
requests waiting for a session (``waiters``: the oldest waiter of each waiting replica holds one
ticket there). Reads only, one round trip; nothing on a request's path calls it.
"""

from __future__ import annotations

from typing import Any

import msgspec

from broker.constants import OPS_SET_LIMIT
from broker.gateway import store_call
from broker.pool import Pool

__all__ = ["FleetPresence", "ReplicaClaim", "fleet_presence"]


class ReplicaClaim(msgspec.Struct, kw_only=True):
    """A replica that serves the pool: its claim id, and until when its claim holds (ms; it
    renews it every third of its claim TTL, so a replica past its deadline is gone)."""

    id: str
    claim_until_ms: int


class FleetPresence(msgspec.Struct, kw_only=True):
    """The replicas with a live claim on the pool (at most ``OPS_SET_LIMIT``, latest deadline
    first) and the number of replicas with requests waiting for one of its sessions."""

    now_ms: int
    replicas: list[ReplicaClaim]
    waiting_replicas: int


async def fleet_presence(pool: Pool, *, limit: int = OPS_SET_LIMIT) -> FleetPresence:
    """The pool's live claims and waiting replicas, at the store's clock."""
    pipe = pool.redis.pipeline(transaction=False)
    pipe.time()
    pipe.zrange(pool.keys.claims, 0, limit - 1, desc=True, withscores=True)
    pipe.zcard(pool.keys.waiters)
    replies: list[Any] = await store_call("read", pipe.execute())
    (seconds, microseconds), claims, waiting = replies
    now = int(seconds) * 1000 + int(microseconds) // 1000
    live = [
        ReplicaClaim(id=replica, claim_until_ms=int(until))
        for replica, until in claims
        if until > now
    ]
    return FleetPresence(now_ms=now, replicas=live, waiting_replicas=int(waiting))
