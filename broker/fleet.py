"""Who serves a pool right now, for operators: the replicas whose claims on it are live (the
``claims`` set the sync script keeps: replica id -> claim deadline) and how many of them have
requests waiting for a session (``waiters``: the oldest waiter of each waiting replica holds one
ticket there). Reads only, one round trip per shard (the clock's beside them); nothing on a
request's path calls it.
"""

from __future__ import annotations

from typing import Any

import msgspec

from broker.constants import OPS_SET_LIMIT
from broker.gateway import store_call
from broker.shards import AnyPool, ShardedPool

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


async def fleet_presence(pool: AnyPool, *, limit: int = OPS_SET_LIMIT) -> FleetPresence:
    """The pool's live claims and waiting replicas, at the store's clock. A pool spread over
    shards is read shard by shard: a replica claims every shard and waits on every shard, so
    claims are merged by replica and the waiting count is the largest of any shard's."""
    shards = pool.shards if isinstance(pool, ShardedPool) else [pool]
    # The clock beside the pipelines, not in them: a Cluster client refuses TIME in a pipeline.
    seconds, microseconds = await store_call("read", pool.redis.time())
    now = int(seconds) * 1000 + int(microseconds) // 1000
    until: dict[str, int] = {}
    waiting = 0
    for shard in shards:
        pipe = shard.redis.pipeline(transaction=False)
        pipe.zrange(shard.keys.claims, 0, limit - 1, desc=True, withscores=True)
        pipe.zcard(shard.keys.waiters)
        replies: list[Any] = await store_call("read", pipe.execute())
        claims, waiters = replies
        for replica, deadline in claims:
            until[replica] = max(until.get(replica, 0), int(deadline))
        waiting = max(waiting, int(waiters))
    live = sorted(
        (
            ReplicaClaim(id=replica, claim_until_ms=deadline)
            for replica, deadline in until.items()
            if deadline > now
        ),
        key=lambda claim: -claim.claim_until_ms,
    )[:limit]
    return FleetPresence(now_ms=now, replicas=live, waiting_replicas=waiting)
