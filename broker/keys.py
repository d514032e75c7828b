"""The Redis key layout of a pool, written once: Python reads it through ``PoolKeys``, the Lua
scripts through the key locals the loader generates from it (``broker/preamble.py``), and
``docs/redis-keys.md`` shows its table (a test keeps the two equal).

Every key carries the pool's hash tag, so a script touches one slot and runs unchanged on Redis
Cluster. Scripts get only ``PoolKeys.base`` as their one KEY and derive the rest from it: packing
every name into each call cost the replica more than anything else in a script call.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Generic, Self, TypeVar, overload

from broker.constants import KEY_PREFIX, POOLS_KEY

__all__ = [
    "FLEET_KEYS",
    "Key",
    "KeyFamily",
    "PoolKeys",
    "layout",
    "lua_name",
    "markdown_table",
]

#: What a member of the layout is on a PoolKeys: a key name, or a function of a member.
_Name = TypeVar("_Name")


@dataclass(frozen=True, slots=True)
class _Member(Generic[_Name]):
    """A member of the layout, a descriptor: read on the class it is itself; read on a PoolKeys,
    that pool's name for it (``_bind``)."""

    suffix: str
    #: The Redis type (HASH, ZSET, SET, channel), as the docs show it.
    kind: str
    #: What it holds, in one line.
    holds: str

    @overload
    def __get__(self, keys: None, owner: type) -> Self: ...
    @overload
    def __get__(self, keys: PoolKeys, owner: type) -> _Name: ...
    def __get__(self, keys: PoolKeys | None, owner: type) -> Self | _Name:
        return self if keys is None else self._bind(f"{keys.base}:{self.suffix}")

    def _bind(self, name: str) -> _Name:
        raise NotImplementedError


@dataclass(frozen=True, slots=True)
class Key(_Member[str]):
    """One key of a pool: ``<base>:<suffix>``."""

    #: The name of its Lua local (default: ``<member>_key``).
    lua: str = ""

    def _bind(self, name: str) -> str:
        return name

    def pattern(self, base: str) -> str:
        return f"{base}:{self.suffix}"


@dataclass(frozen=True, slots=True)
class KeyFamily(_Member["_Bound"]):
    """Keys of a pool named after a member: ``<base>:<suffix><member>``, e.g. a session's hash.
    Read on a PoolKeys, it is a function of the member."""

    #: What the member is, for the docs (``<id>``).
    member: str
    #: The name of its Lua local (default: ``<member>_prefix``).
    lua: str = ""

    def _bind(self, name: str) -> _Bound:
        return _Bound(name)

    def pattern(self, base: str) -> str:
        return f"{base}:{self.suffix}{self.member}"


@dataclass(frozen=True, slots=True)
class _Bound:
    """A key family of one pool: call it with a member for that member's key."""

    prefix: str

    def __call__(self, member: str | int) -> str:
        return f"{self.prefix}{member}"


class PoolKeys:
    """The names of the keys of one pool, each a named member (the class attributes below are
    the layout, in the order the docs list them)."""

    pool = Key(
        "pool",
        "HASH",
        "`strategy`, `epoch_ms`, `next_ordinal`, `rr_cursor` (tier 0's round-robin cursor; "
        "`rr_cursor:<priority>` for other tiers), the pool-wide operator settings (breaker, "
        "longest cooldown, `rate_learning`: the last replica to sync writes them), and `due_at` "
        "(ms: no expiry, "
        "cooldown, breaker or quota deadline falls before it; the scripts skip their "
        "housekeeping until then, never for more than 1 s)",
    )
    members = Key(
        "members",
        "ZSET",
        "session id -> ordinal: every session some live replica's configuration names",
    )
    session = KeyFamily("s:", "HASH", "the session's state (below)", "<id>")
    avail = Key("avail", "ZSET", "the sessions eligible right now, scored for the strategy")
    tier = KeyFamily(
        "avail:", "ZSET", "the same, for one priority tier (avail is their union)", "<priority>"
    )
    tiers = Key("tiers", "ZSET", "priority -> priority: the tiers that have an eligible session")
    cooling = Key("cooling", "ZSET", "session id -> cooldown deadline (ms since epoch)")
    disabled = Key("disabled", "SET", "disabled session ids")
    open = Key("open", "ZSET", "session id -> when its open breaker half-opens (ms)")
    half_open = Key(
        "half_open",
        "SET",
        "session ids whose breaker is half-open (with `open`: every breaker not closed)",
    )
    quota = Key(
        "quota",
        "ZSET",
        "session id -> when its pace (its rate: configured, seeded or learned) admits the next "
        "request and its unit budget has something left, whichever is later (ms)",
    )
    probes = Key("probes", "SET", "lease ids that are half-open probes")
    waiters = Key(
        "waiters", "ZSET", "ticket id -> arrival (ms): the oldest waiter of each waiting replica"
    )
    tickets = Key(
        "tickets", "HASH", "ticket id -> deadline (ms): a ticket not renewed by then lapses"
    )
    wake_channel = Key(
        "wake",
        "channel",
        "pub/sub: a session became available, or the queue moved (`SUBSCRIBE` to watch)",
        lua="wake_channel",
    )
    leases = Key("leases", "ZSET", "live lease id -> expiry (ms)")
    owners = Key(
        "owners", "HASH", "lease id -> session id, live leases and ended ones not yet forgotten"
    )
    charges = Key(
        "charges",
        "HASH",
        "lease id -> units pre-charged at acquire, until its release settles them",
    )
    expired = Key(
        "expired",
        "ZSET",
        "lease id -> when it expired (ms): expired before its release arrived, remembered "
        "2 minutes so a late release counts once",
    )
    released = Key(
        "released",
        "ZSET",
        "lease id -> when it was released (ms), remembered 2 minutes so a replay counts once",
    )
    claims = Key(
        "claims",
        "ZSET",
        "replica id -> claim deadline (ms): the replicas whose configurations keep sessions "
        "in the pool; the id (`<hostname>-<pid>-<4 hex>`) is the one the replica's log lines, "
        "metrics and admin API show",
    )
    claim = KeyFamily(
        "claim:",
        "ZSET",
        "session id -> position: the sessions that replica's configuration names (`:<sync>` "
        "appended while a sync in several calls collects them)",
        "<replica>",
    )
    alerts = Key(
        "alerts", "HASH", "alert name -> when it started firing (ms): the fleet's firing alerts"
    )
    outcomes = Key(
        "outcomes",
        "HASH",
        "`<10 s bucket>:n` / `:e` -> upstream attempts / errors the replicas reported (the "
        "error-rate alert's window)",
    )
    kinds = Key(
        "kinds",
        "HASH",
        "`<kind>` -> last success (ms), `<kind>:suspect` -> the session a 401/403 on that kind "
        "made suspect; a kind is a hash of the method and the path's first two segments (never "
        "the path); emptied when it reaches 1,000 kinds (the 401/403 judgement, "
        "docs/how-it-works.md)",
    )
    summary = Key("summary", "HASH", "`last_at` (ms), `requests`: whose turn the health summary is")

    __slots__ = ("base", "name")

    def __init__(self, name: str) -> None:
        #: The pool's name; its hash tag.
        self.name = name
        #: The one key every script is given; every key of the pool starts with it.
        self.base = f"{KEY_PREFIX}:{{{name}}}"

    def __repr__(self) -> str:
        return f"PoolKeys({self.name!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PoolKeys) and other.name == self.name

    def __hash__(self) -> int:
        return hash(self.name)

    def owns(self, key: str) -> bool:
        """Whether ``key`` is a member of this pool's layout (a family's key with any member)."""
        for _, spec in layout():
            name = f"{self.base}:{spec.suffix}"
            if key == name or (isinstance(spec, KeyFamily) and key.startswith(name)):
                return True
        return False


def layout() -> Iterator[tuple[str, Key | KeyFamily]]:
    """Every member of the layout, with its attribute name, in declaration order."""
    for attribute, value in vars(PoolKeys).items():
        if isinstance(value, Key | KeyFamily):
            yield attribute, value


def lua_name(attribute: str, spec: Key | KeyFamily) -> str:
    """The Lua local a member is known by in the scripts."""
    if spec.lua:
        return spec.lua
    return f"{attribute}_prefix" if isinstance(spec, KeyFamily) else f"{attribute}_key"


#: Keys outside every pool's hash tag, for the docs: no script touches them.
FLEET_KEYS = (
    (
        POOLS_KEY,
        "HASH",
        "pool name -> JSON: strategy, default, fallback, path prefix, models, shards, as the "
        "replicas "
        "serving it last recorded at sync (for `status`; outside every pool's hash tag, never "
        "read or written on a request's path)",
    ),
)


def markdown_table() -> str:
    """The key table of ``docs/redis-keys.md``, for pool ``P``."""
    base = PoolKeys("P").base
    rows = ["| key | type | holds |", "| --- | --- | --- |"]
    rows += [f"| `{s.pattern(base)}` | {s.kind} | {s.holds} |" for _, s in layout()]
    rows += [f"| `{name}` | {kind} | {holds} |" for name, kind, holds in FLEET_KEYS]
    return "\n".join(rows) + "\n"
