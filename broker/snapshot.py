"""Export and import of a pool's health state as JSON: counters, health, last use, last error,
cooldown and breaker deadlines, disables and weight overrides survive a move to a new Redis (the
predecessor kept them in its sessions.json).

Never exported: secrets (Redis has none) and lease state (live leases do not move; in-flight
counts start at zero on the new store). Deadlines are absolute store milliseconds, so a cooldown
still runs out when it would have, given the two stores' clocks agree.

A pool spread over shards (broker/shards.py) exports as one pool: its sessions shard by shard,
the pool fields of its first shard. An import places each session in the shard it lives in under
the importing pool's shard count, so a snapshot also carries a pool's history from one shard
count to another.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any, Final, Literal

import msgspec

from broker.admin import PoolAdmin
from broker.gateway import store_call
from broker.shard_admin import AnyAdmin, ShardedAdmin
from broker.shard_layout import shard_of

__all__ = [
    "FORMAT",
    "SessionState",
    "Snapshot",
    "SnapshotError",
    "export_state",
    "import_state",
    "parse_snapshot",
]

FORMAT: Final = "session-broker/health-state"
_ID = r"^[A-Za-z0-9._-]{1,64}$"

#: Session fields that move. Lease state (state, in_flight, probes) is recomputed or starts empty.
SESSION_FIELDS = frozenset(
    {
        "weight", "weight_override", "max_concurrency", "rpm", "burst", "tat", "enabled",
        "disabled_reason", "disabled_at", "cooldown_until", "rl_streak", "rl_last_at", "breaker",
        "breaker_failures", "breaker_trips", "breaker_until", "breaker_opened_at", "leases",
        "leases_expired", "last_used", "n_success", "n_rate_limited", "n_auth", "n_server",
        "n_network", "n_timeout", "n_other", "n_unused", "cooldowns", "last_error",
        "last_error_at", "success_rate", "latency_ms", "health", "health_at", "reset_at",
        "priority", "tpm", "unit_tat", "units", "breaker_calls", "auth_suspect_at",
        "auth_suspect_kind",
        "rate_rpm", "rate_source", "rate_decreased_at",
        "rate_raised_at", "rate_raises", "rate_ceiling_rpm", "rate_seed_rpm", "rate_ok_n",
        "rate_ok_from", "rate_decreases", "rate_increases", "probe_streak", "paced_at",
    }
)  # fmt: skip
#: Pool fields that move; an existing pool keeps its own (its replicas' configuration wins).
POOL_FIELDS = frozenset(
    {
        "strategy", "epoch_ms", "next_ordinal", "rr_cursor", "breaker_threshold",
        "breaker_timeout_ms", "breaker_timeout_max_ms", "half_open_probes", "cooldown_max_ms",
        "breaker_window", "breaker_min_calls", "breaker_failure_ratio",
    }
)  # fmt: skip
#: Pool fields older releases wrote (now code constants of the scripts): accepted, not imported.
RETIRED_POOL_FIELDS = frozenset({"streak_window_ms", "quota_slack"})


class SnapshotError(ValueError):
    """A snapshot that cannot be imported; the message says which part and why."""


class SessionState(msgspec.Struct, forbid_unknown_fields=True):
    id: Annotated[str, msgspec.Meta(pattern=_ID)]
    ordinal: Annotated[int, msgspec.Meta(ge=1)]
    fields: dict[str, str]


class Snapshot(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    format: Literal["session-broker/health-state"]
    version: Literal[1]
    pool: str
    exported_at_ms: int
    pool_fields: dict[str, str]
    sessions: list[SessionState]


async def export_state(admin: AnyAdmin) -> Snapshot:
    """The pool's health state now (members in configuration order; shard by shard)."""
    if isinstance(admin, ShardedAdmin):
        parts = await asyncio.gather(*(_export(shard) for shard in admin.shards))
        return Snapshot(
            format=FORMAT,
            version=1,
            pool=admin.pool.name,
            exported_at_ms=max(part.exported_at_ms for part in parts),
            pool_fields=parts[0].pool_fields,
            sessions=[session for part in parts for session in part.sessions],
        )
    return await _export(admin)


async def _export(admin: PoolAdmin) -> Snapshot:
    redis, keys = admin.redis, admin.keys
    members: list[tuple[str, float]] = await store_call(
        "export", redis.zrange(keys.members, 0, -1, withscores=True)
    )
    pipe = redis.pipeline(transaction=False)
    pipe.hgetall(keys.pool)
    for session_id, _ in members:
        pipe.hgetall(keys.session(session_id))
    # TIME beside the pipeline, not in it: a cluster client refuses TIME in a pipeline.
    seconds, micro = await store_call("export", redis.time())
    pool_hash, *hashes = await store_call("export", pipe.execute())
    sessions = [
        SessionState(
            id=session_id,
            ordinal=int(ordinal),
            fields={k: v for k, v in sorted(h.items()) if k in SESSION_FIELDS},
        )
        for (session_id, ordinal), h in zip(members, hashes, strict=True)
    ]
    return Snapshot(
        format=FORMAT,
        version=1,
        pool=admin.pool.name,
        exported_at_ms=int(seconds) * 1000 + int(micro) // 1000,
        pool_fields={k: v for k, v in sorted(pool_hash.items()) if k in POOL_FIELDS},
        sessions=sessions,
    )


def parse_snapshot(data: bytes | str | dict[str, Any]) -> Snapshot:
    """A snapshot from its JSON (or decoded JSON); SnapshotError names what is wrong."""
    try:
        if isinstance(data, dict):
            snapshot = msgspec.convert(data, Snapshot)
        else:
            snapshot = msgspec.json.decode(data, type=Snapshot)
    except msgspec.DecodeError as exc:  # ValidationError is a DecodeError
        raise SnapshotError(f"not a {FORMAT} snapshot: {exc}") from exc
    unknown = set(snapshot.pool_fields) - POOL_FIELDS - RETIRED_POOL_FIELDS
    if unknown:
        raise SnapshotError(f"pool_fields: unknown field(s) {', '.join(sorted(unknown))}")
    for session in snapshot.sessions:
        unknown = set(session.fields) - SESSION_FIELDS
        if unknown:
            names = ", ".join(sorted(unknown))
            raise SnapshotError(f"session {session.id!r}: unknown field(s) {names}")
    return snapshot


async def import_state(admin: AnyAdmin, snapshot: Snapshot) -> int:
    """Write ``snapshot`` into the admin's pool (each session into its shard); returns the
    number of sessions imported."""
    shards = admin.shards if isinstance(admin, ShardedAdmin) else [admin]
    pool_fields = {k: v for k, v in snapshot.pool_fields.items() if k in POOL_FIELDS}
    for shard in shards:
        await shard.pool.gateway.restore(session_id="", ordinal=None, fields=pool_fields)
    for session in snapshot.sessions:
        gateway = shards[shard_of(session.id, len(shards))].pool.gateway
        await gateway.restore(session_id=session.id, ordinal=session.ordinal, fields=session.fields)
    return len(snapshot.sessions)
