"""Where the shards of a pool spread over several hash slots are (broker/shards.py): their names
(hash tags), the shard each session lives in, and the shard a lease id names. Pure functions of
the pool's name and the shard count, so every replica and operator command agrees on them.
"""

from __future__ import annotations

import hashlib
from typing import Final

from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot

__all__ = ["LEASE_SHARD_SEPARATOR", "MAX_SHARDS", "shard_names", "shard_of", "shard_of_lease"]

#: The most shards one pool may have: far more than the nodes of any cluster it would run on.
MAX_SHARDS: Final = 64
#: Separates a lease's own id from its shard's index.
LEASE_SHARD_SEPARATOR: Final = "@"
#: Candidate hash tags tried per shard before settling for the first (the chance that none of
#: them lands in its share of the slots is below 1e-9 for any shard count up to MAX_SHARDS).
_TAG_SEARCH: Final = 2_000


def shard_names(pool: str, shards: int) -> tuple[str, ...]:
    """The names (hash tags) of the shards of ``pool`` spread over ``shards``."""
    if not 1 <= shards <= MAX_SHARDS:
        raise ValueError(f"shards must be 1-{MAX_SHARDS}, not {shards}")
    if shards == 1:
        return (pool,)
    names = []
    for k in range(shards):
        low = k * REDIS_CLUSTER_HASH_SLOTS // shards
        high = (k + 1) * REDIS_CLUSTER_HASH_SLOTS // shards
        candidates = (f"{pool}#{k}" + (f".{j}" if j else "") for j in range(_TAG_SEARCH))
        fitting = (name for name in candidates if low <= key_slot(name.encode()) < high)
        names.append(next(fitting, f"{pool}#{k}"))
    return tuple(names)


def shard_of(session_id: str, shards: int) -> int:
    """The shard a session lives in: the same on every replica (not Python's salted hash; and
    not a CRC, whose low bits barely differ between ids like ``s1``, ``s2``, ...)."""
    digest = hashlib.blake2b(session_id.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % shards


def shard_of_lease(lease_id: str, shards: int) -> int | None:
    """The shard a lease id names; None when it names none of ``shards``."""
    _, separator, index = lease_id.rpartition(LEASE_SHARD_SEPARATOR)
    if not separator or not index.isdigit() or int(index) >= shards:
        return None
    return int(index)
