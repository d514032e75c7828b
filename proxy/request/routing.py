"""Routing: which pool a request goes to, and the path its upstream is sent.

A request goes to the pool its ``POOL_HEADER`` names; else to the pool whose ``path_prefix``
starts its path (the longest); else, when pools list ``models``, to the pool serving the model its
JSON body asks for (exact names before patterns); else to the default pool. A name, or a model,
that no pool serves gets 404 naming it: never a silent default. The pools themselves are declared
in proxy.config.pools.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Any

import msgspec
from multidict import CIMultiDictProxy

from proxy.config.pools import PoolPlan, PoolTable
from proxy.request.body import ReplayableBody

__all__ = ["NoRoute", "Routed", "requested_model", "route", "route_model", "route_request"]

#: Longest pool name or model a 404 repeats back to the client.
SHOWN_MAX = 100


class NoRoute(Exception):
    """A request names a pool, or asks for a model, that no pool serves."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class Routed:
    """Where a request goes: its pool, and the path and query to send the upstream."""

    plan: PoolPlan
    path_qs: str


class _ModelAsked(msgspec.Struct):
    model: Any = None


_decoder = msgspec.json.Decoder(_ModelAsked)


def requested_model(body: bytes) -> str | None:
    """The ``model`` a JSON request body asks for; None for any other body, one nested too deep
    for the decoder or holding numbers out of range (it then goes to the default pool)."""
    try:
        asked = _decoder.decode(body)
    except (ValueError, RecursionError):  # msgspec's errors are ValueErrors
        return None
    return asked.model if isinstance(asked.model, str) else None


async def route_request(
    table: PoolTable, headers: CIMultiDictProxy[str], path_qs: str, body: ReplayableBody | None
) -> Routed:
    """The pool a request goes to: named by the pool header, by a path prefix, by the JSON
    body's model, else the default one. Raises NoRoute (and BodyTooLarge while reading)."""
    named = headers.get(table.header) if table.header else None
    routed = route(table, named=named, path_qs=path_qs)
    if routed is not None:
        return routed
    model = None
    if table.routes_by_model and body is not None:
        model = requested_model(await body.read_bytes())
    return route_model(table, model, path_qs=path_qs)


def route(table: PoolTable, *, named: str | None, path_qs: str) -> Routed | None:
    """The pool a request names in the pool header, or whose path prefix starts its path;
    None when it does neither. Raises NoRoute for a name no pool has."""
    if named is not None:
        plan = table.pools.get(named)
        if plan is None:
            shown = _shown(named)
            raise NoRoute("unknown_pool", f"no pool named {shown} (from {table.header})")
        return _routed(plan, path_qs)
    matching = [
        plan
        for plan in table.pools.values()
        if plan.path_prefix is not None and _strip(plan.path_prefix, path_qs) != path_qs
    ]
    best = max(matching, key=lambda plan: len(plan.path_prefix or ""), default=None)
    return None if best is None else _routed(best, path_qs)


def route_model(table: PoolTable, model: str | None, *, path_qs: str) -> Routed:
    """The pool serving ``model`` (exact names before patterns), else the default pool.
    Raises NoRoute when a model no pool serves is asked for, or there is no default."""
    if model is not None and table.routes_by_model:
        plans = table.pools.values()
        found = next((p for p in plans if model in p.models), None) or next(
            (p for p in plans if any(fnmatch.fnmatchcase(model, m) for m in p.models)), None
        )
        if found is None:
            raise NoRoute("unknown_model", f"no pool serves model {_shown(model)}")
        return _routed(found, path_qs)
    if table.default is None:
        raise NoRoute(
            "no_pool_route",
            f"the request names no pool (by {table.header or 'header'}, path prefix or model) "
            "and there is no default pool",
        )
    return _routed(table.pools[table.default], path_qs)


def _routed(plan: PoolPlan, path_qs: str) -> Routed:
    """A request for ``plan``: ``path_qs`` without the pool's path prefix."""
    return Routed(plan, _strip(plan.path_prefix, path_qs))


def _shown(asked: str) -> str:
    """What a client asked for, quoted for an error message; a long one cut short."""
    return repr(asked if len(asked) <= SHOWN_MAX else asked[:SHOWN_MAX] + "...")


def _strip(prefix: str | None, path_qs: str) -> str:
    """``path_qs`` without ``prefix`` when it starts with it (on a segment boundary)."""
    if prefix is None or not path_qs.startswith(prefix):
        return path_qs
    rest = path_qs[len(prefix) :]
    if rest == "":
        return "/"
    if rest[0] == "/":
        return rest
    if rest[0] == "?":
        return "/" + rest
    return path_qs
