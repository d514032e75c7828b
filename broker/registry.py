"""The fleet's list of pools, for operators: ``sb:pools``, a HASH of pool name -> a JSON
description (strategy, fallback, default, routes) written by every replica that serves the pool
when it syncs (the last one wins, like a pool's tunables), and dropped by the replica whose
leaving empties the pool. It lives outside every pool's hash tag: scripts never touch it, and
nothing on a request's path reads or writes it. Never a secret: names and routes only.
"""

from __future__ import annotations

from collections.abc import Mapping

import msgspec
from redis.typing import EncodableT, FieldT

from broker.constants import POOLS_KEY
from broker.gateway import store_call
from broker.store import Store

__all__ = ["PoolEntry", "forget_pool", "list_pools", "record_pools"]

#: What failed, as an operator reads it ('... failed: <the Redis error>').
_READING = f"reading the fleet's list of pools ({POOLS_KEY})"
_WRITING = f"writing the fleet's list of pools ({POOLS_KEY})"


class PoolEntry(msgspec.Struct, kw_only=True):
    """How the fleet serves a pool."""

    strategy: str
    default: bool = False
    fallback: str | None = None
    path_prefix: str | None = None
    models: list[str] = msgspec.field(default_factory=list)
    #: Hash slots the pool is spread over (broker/shards.py): how operators find its keys.
    shards: int = 1


async def record_pools(store: Store, entries: Mapping[str, PoolEntry]) -> None:
    """Write (or overwrite) the entries of these pools."""
    if entries:
        fields: dict[FieldT, EncodableT] = {
            name: msgspec.json.encode(entry) for name, entry in entries.items()
        }
        await store_call(_WRITING, store.hset(POOLS_KEY, mapping=fields))


async def forget_pool(store: Store, name: str) -> None:
    await store_call(_WRITING, store.hdel(POOLS_KEY, name))


async def list_pools(store: Store) -> dict[str, PoolEntry]:
    """Every pool some replica recorded, by name; an unreadable entry shows as bare."""
    raw: dict[str, str] = await store_call(_READING, store.hgetall(POOLS_KEY))
    pools: dict[str, PoolEntry] = {}
    for name in sorted(raw):
        try:
            pools[name] = msgspec.json.decode(raw[name], type=PoolEntry)
        except msgspec.DecodeError:
            pools[name] = PoolEntry(strategy="?")
    return pools
