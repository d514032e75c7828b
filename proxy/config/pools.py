"""The pools a replica serves, as the configuration declares them.

``SESSIONS`` (or a sessions file with a plain ``sessions`` list) makes one pool, named ``POOL``.
A sessions file may instead declare several pools, each with its own sessions and, optionally,
its own strategy, upstream, session header, routes and fallback::

    default_pool = "chat"

    [pools.chat]
    models = ["gpt-4o", "gpt-4o-*"]     # JSON body's "model": exact names first, then patterns
    fallback = "cheap"                  # tried when chat has nothing eligible
    shards = 3                          # spread over 3 hash slots (default: POOL_SHARDS)
    sessions = [{id = "p1", secret = "...", priority = 1, tpm = 90000}]

    [pools.cheap]
    path_prefix = "/cheap"              # /cheap/v1/... goes upstream as /v1/...
    upstream_url = "https://other.example"
    session_header = "x-api-key: {secret}"
    sessions = [{id = "c1", secret = "..."}]

A request goes to the pool its ``POOL_HEADER`` names, its path prefix, its model, else the default
pool (``default_pool``; a lone pool is its own default): see proxy.request.routing. Each pool has
its own keys (hash tag ``{name}``, or several with ``shards``), so on Redis Cluster pools
spread over the nodes. Fallback
chains are checked when the file is read: a loop is refused, naming it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

import msgspec

from broker import ConfigError, Session, Strategy, load_sessions
from broker.sessions import read_file, sessions_from
from broker.shard_layout import MAX_SHARDS
from proxy.config.settings import SessionHeader, Settings, parse_session_header

__all__ = ["PoolPlan", "PoolTable", "load_pools", "single_pool"]

#: Most attempts per request when RETRY_COUNT is not set: the pool size, at most this.
DEFAULT_MAX_ATTEMPTS = 10
_POOL_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")


class _PoolEntry(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    sessions: list[Any]
    strategy: Strategy | None = None
    upstream_url: str | None = None
    session_header: str | None = None
    path_prefix: str | None = None
    models: list[str] = msgspec.field(default_factory=list)
    fallback: str | None = None
    shards: Annotated[int, msgspec.Meta(ge=1, le=MAX_SHARDS)] | None = None


class _PoolsDocument(msgspec.Struct, forbid_unknown_fields=True):
    pools: dict[Any, _PoolEntry]
    default_pool: str | None = None


@dataclass(slots=True)
class PoolPlan:
    """One pool as this replica serves it: its sessions (secrets included) and where they go.
    Two plans are equal when they serve the same sessions the same way (a reload that changes
    nothing)."""

    name: str
    sessions: list[Session]
    strategy: Strategy
    upstream_url: str
    header: SessionHeader
    max_attempts: int
    path_prefix: str | None = None
    models: tuple[str, ...] = ()
    fallback: str | None = None
    #: Hash slots the pool is spread over (broker/shards.py).
    shards: int = 1
    secrets: dict[str, str] = field(init=False, compare=False)
    #: Sessions with a unit budget (tpm): their answers are read for usage.
    metered: frozenset[str] = field(init=False, compare=False)

    def __post_init__(self) -> None:
        self.upstream_url = self.upstream_url.rstrip("/")
        self.secrets = {s.id: s.secret for s in self.sessions}
        self.metered = frozenset(s.id for s in self.sessions if s.tpm)


@dataclass(frozen=True, slots=True)
class PoolTable:
    """Every pool of this replica, its routes and fallback chains (equal tables route the same
    requests to the same sessions)."""

    pools: dict[str, PoolPlan]
    default: str | None = None
    #: The request header naming a pool (POOL_HEADER); None: not read.
    header: str | None = None

    @property
    def routes_by_model(self) -> bool:
        return any(plan.models for plan in self.pools.values())

    @property
    def sessions(self) -> list[Session]:
        """Every session of every pool."""
        return [s for plan in self.pools.values() for s in plan.sessions]

    def chain(self, name: str) -> list[PoolPlan]:
        """The pool ``name`` and its fallbacks, in the order they are tried."""
        plans = [self.pools[name]]
        while plans[-1].fallback is not None:
            plans.append(self.pools[plans[-1].fallback])
        return plans


def _header_setting(settings: Settings) -> str | None:
    return None if settings.pool_header == "none" else settings.pool_header


def _max_attempts(settings: Settings, sessions: list[Session]) -> int:
    return settings.retry_count or min(len(sessions), DEFAULT_MAX_ATTEMPTS)


def single_pool(settings: Settings, sessions: list[Session]) -> PoolTable:
    """One pool named ``POOL`` with ``sessions``, the default for every request."""
    if settings.upstream_url is None:
        raise ConfigError("UPSTREAM_URL is not set; give the upstream's base URL")
    plan = PoolPlan(
        name=settings.pool,
        sessions=sessions,
        strategy=settings.session_selection_strategy,
        upstream_url=settings.upstream_url,
        header=settings.header,
        max_attempts=_max_attempts(settings, sessions),
        shards=settings.pool_shards,
    )
    return PoolTable({plan.name: plan}, default=plan.name, header=_header_setting(settings))


def load_pools(settings: Settings) -> PoolTable:
    """The pools of SESSIONS or SESSIONS_FILE; raises ConfigError naming what is wrong."""
    if settings.sessions_file is None:
        return single_pool(settings, load_sessions(secrets=settings.sessions, path=None))
    path = Path(settings.sessions_file)
    if settings.sessions:
        raise ConfigError("SESSIONS and SESSIONS_FILE are both set; give one of them")
    raw = read_file(path)
    origin = f"SESSIONS_FILE {path}"
    if isinstance(raw, dict) and "pools" in raw:
        return _from_document(raw, settings, origin)
    return single_pool(settings, sessions_from(raw, origin))


def _from_document(raw: dict[str, Any], settings: Settings, origin: str) -> PoolTable:
    if "sessions" in raw:
        raise ConfigError(f"{origin}: give either 'sessions' (one pool) or 'pools', not both")
    try:
        document = msgspec.convert(raw, _PoolsDocument)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"{origin}: {exc}") from exc
    if not document.pools:
        raise ConfigError(f"{origin}: 'pools' is empty; declare at least one pool")
    plans = {name: _plan(name, entry, settings, origin) for name, entry in document.pools.items()}
    _check_routes(plans, origin)
    _check_fallbacks(plans, origin)
    table = PoolTable(plans)
    for plan in plans.values():  # a request may try every session along its pool's chain
        chained = [s for link in table.chain(plan.name) for s in link.sessions]
        plan.max_attempts = _max_attempts(settings, chained)
    default = document.default_pool
    if default is None and len(plans) == 1:
        default = next(iter(plans))
    if default is not None and default not in plans:
        raise ConfigError(f"{origin}: default_pool {default!r} is not one of the pools")
    return PoolTable(plans, default=default, header=_header_setting(settings))


def _plan(name: Any, entry: _PoolEntry, settings: Settings, origin: str) -> PoolPlan:
    where = f"{origin}: pool {name!r}"
    if not isinstance(name, str) or not _POOL_NAME.fullmatch(name):
        raise ConfigError(f"{where}: a pool name is letters, digits, '.', '_' or '-', up to 64")
    upstream = entry.upstream_url or settings.upstream_url
    if upstream is None:
        raise ConfigError(f"{where}: no upstream; set its upstream_url, or UPSTREAM_URL")
    url = urlsplit(upstream)
    if url.scheme not in ("http", "https") or not url.hostname:
        raise ConfigError(f"{where}: upstream_url {upstream!r} is not an http(s) URL with a host")
    header = settings.header
    if entry.session_header is not None:
        parsed = parse_session_header(entry.session_header)
        if parsed is None:
            raise ConfigError(f"{where}: session_header is not 'Name: ...{{secret}}...'")
        header = parsed
    sessions = sessions_from({"sessions": entry.sessions}, where)
    return PoolPlan(
        name=name,
        sessions=sessions,
        strategy=entry.strategy or settings.session_selection_strategy,
        upstream_url=upstream,
        header=header,
        max_attempts=_max_attempts(settings, sessions),
        path_prefix=_prefix(entry.path_prefix, where),
        models=tuple(entry.models),
        fallback=entry.fallback,
        shards=entry.shards or settings.pool_shards,
    )


def _prefix(value: str | None, where: str) -> str | None:
    if value is None:
        return None
    prefix = value.rstrip("/")
    if not prefix.startswith("/") or any(c in prefix for c in "?#") or " " in prefix:
        raise ConfigError(f"{where}: path_prefix {value!r} is not a path like '/name'")
    return prefix


def _check_routes(plans: dict[str, PoolPlan], origin: str) -> None:
    """No two pools share a path prefix or an exact model name."""
    prefixes: dict[str, str] = {}
    models: dict[str, str] = {}
    for plan in plans.values():
        if plan.path_prefix is not None:
            other = prefixes.setdefault(plan.path_prefix, plan.name)
            if other != plan.name:
                raise ConfigError(
                    f"{origin}: pools {other!r} and {plan.name!r} both have path_prefix "
                    f"{plan.path_prefix!r}"
                )
        for model in plan.models:
            if not model:
                raise ConfigError(f"{origin}: pool {plan.name!r} lists an empty model name")
            other = models.setdefault(model, plan.name)
            if other != plan.name:
                raise ConfigError(
                    f"{origin}: pools {other!r} and {plan.name!r} both list model {model!r}"
                )


def _check_fallbacks(plans: dict[str, PoolPlan], origin: str) -> None:
    """Every fallback names a pool, and no chain comes back to a pool it passed."""
    for plan in plans.values():
        if plan.fallback is not None and plan.fallback not in plans:
            raise ConfigError(
                f"{origin}: pool {plan.name!r} falls back to {plan.fallback!r}, which is not "
                "one of the pools"
            )
    for start in plans.values():
        seen = [start.name]
        current = start
        while current.fallback is not None:
            if current.fallback in seen:
                loop = " -> ".join([*seen[seen.index(current.fallback) :], current.fallback])
                raise ConfigError(f"{origin}: fallback loop {loop}; a chain must end")
            seen.append(current.fallback)
            current = plans[current.fallback]
