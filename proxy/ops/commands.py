"""The operator commands, reading and writing the fleet's Redis directly (from a laptop too):

``status`` (a table; ``--watch``), ``sessions enable|disable|drain|reset|weight ID``, ``export``
and ``import`` of the pool's health state as JSON. They need REDIS_URL (or the Sentinel /
Cluster settings) and POOL; never UPSTREAM_URL or the sessions' secrets. ``status`` without a
POOL shows every pool the fleet's replicas recorded (broker.registry), each with how requests
reach it and what it falls back to.

What they print is for a person on a terminal (lines and tables) and JSON for a program: when
standard output is not a terminal, or with ``--json`` (``--no-json`` forces the lines).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path

import msgspec

from broker import BrokerError, ConfigError, UnknownSession, open_pool, open_store
from broker.admin import SessionView
from broker.registry import PoolEntry, list_pools
from broker.shard_admin import AnyAdmin, open_admin
from broker.snapshot import SnapshotError, export_state, import_state, parse_snapshot
from proxy.config.settings import Settings
from proxy.ops.status import render_route, render_status

__all__ = ["add_operator_commands", "run_operator"]

#: Commands of this module, as the CLI names them.
COMMANDS = ("status", "sessions", "export", "import")
ACTIONS = ("enable", "disable", "drain", "reset", "weight")


def _add_json(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--json",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="JSON for programs (the default when standard output is not a terminal)",
    )


def _wants_json(args: argparse.Namespace) -> bool:
    """``--json``/``--no-json`` when given, else JSON unless standard output is a terminal."""
    chosen: bool | None = getattr(args, "json", None)
    return chosen if chosen is not None else not sys.stdout.isatty()


def _json(document: object, *, indent: bool = True) -> str:
    encoded = msgspec.json.encode(document)
    return (msgspec.json.format(encoded) if indent else encoded).decode()


def add_operator_commands(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
) -> list[argparse.ArgumentParser]:
    """The operator subcommands; returns their parsers (the CLI adds the store's flags)."""
    status = commands.add_parser("status", help="the pool's sessions as a table (from Redis)")
    _add_json(status)
    status.add_argument(
        "--watch",
        nargs="?",
        type=float,
        const=2.0,
        metavar="SECONDS",
        help="show it again every SECONDS seconds (2 when no number follows) until Ctrl-C; "
        "with JSON, one document per line",
    )
    sessions = commands.add_parser("sessions", help="act on one session, fleet-wide")
    sessions.add_argument("action", choices=ACTIONS)
    sessions.add_argument("id", help="session id")
    sessions.add_argument("weight", nargs="?", help="for weight: a number > 0, or 'default'")
    sessions.add_argument("--reason", default="operator", help="for disable: why (shown)")
    _add_json(sessions)
    export = commands.add_parser("export", help="the pool's health state as JSON")
    export.add_argument("--output", "-o", help="file to write (default: standard output)")
    _add_json(export)
    restore = commands.add_parser("import", help="load health state exported before")
    restore.add_argument("file", help="the JSON file, or - for standard input")
    _add_json(restore)
    return [status, sessions, export, restore]


@asynccontextmanager
async def _admin(settings: Settings) -> AsyncIterator[AnyAdmin]:
    if settings.redis_url is None and not settings.redis_sentinels:
        raise ConfigError(
            "REDIS_URL is not set: the operator commands work on the fleet's Redis "
            "(set REDIS_URL, or REDIS_SENTINELS)"
        )
    broker_settings = settings.broker()
    store = open_store(broker_settings)
    try:
        recorded = await list_pools(store)
        yield _admin_of(
            open_admin(open_pool(store, broker_settings)), broker_settings.pool, recorded
        )
    finally:
        await store.aclose()


def _admin_of(admin: AnyAdmin, name: str, recorded: dict[str, PoolEntry]) -> AnyAdmin:
    """An admin of pool ``name`` on the same store, over the shards the fleet recorded for
    it (else POOL_SHARDS)."""
    entry = recorded.get(name)
    shards = admin.pool.settings.shards if entry is None else entry.shards
    if name == admin.pool.name and shards == admin.pool.settings.shards:
        return admin
    settings = replace(admin.pool.settings, pool=name, shards=shards)
    return open_admin(open_pool(admin.pool.redis, settings))


async def _status(
    admin: AnyAdmin, as_json: bool, *, every_pool: bool = False, lines: bool = False
) -> str:
    """The status of ``admin``'s pool; with ``every_pool``, of each pool the fleet recorded
    (``admin``'s own when none is). ``lines``: JSON on one line."""
    recorded = await list_pools(admin.pool.redis)
    names = list(recorded) if every_pool and recorded else [admin.pool.name]
    documents = []
    texts = []
    for name in names:
        pool_admin = _admin_of(admin, name, recorded)
        summary = await pool_admin.summary()
        sessions = await pool_admin.sessions()
        route = recorded.get(name)
        documents.append({"pool": name, "now_ms": summary.now_ms, "route": route,
                          "summary": summary, "sessions": sessions})  # fmt: skip
        text = render_status(summary, sessions)
        routed = route is not None and (
            len(recorded) > 1 or route.fallback or route.path_prefix or route.models
        )
        texts.append(f"{render_route(name, route)}\n{text}" if route and routed else text)
    if as_json:
        document = documents[0] if len(documents) == 1 else {"pools": documents}
        return _json(document, indent=not lines)
    return "\n\n".join(texts)


async def _watch(admin: AnyAdmin, every_s: float, *, as_json: bool, every_pool: bool) -> None:
    """Status again and again: on a terminal, in place; as JSON, one document per line."""
    while True:
        shown = await _status(admin, as_json, every_pool=every_pool, lines=as_json)
        if not as_json:
            shown = f"\x1b[H\x1b[2J{shown}\n\n(every {every_s:g} s; Ctrl-C to stop)"
        sys.stdout.write(shown + "\n")
        sys.stdout.flush()
        await asyncio.sleep(every_s)


async def _session_action(admin: AnyAdmin, args: argparse.Namespace) -> str:
    if args.action == "weight":
        if args.weight is None:
            raise ConfigError("sessions weight needs a WEIGHT: a number > 0, or 'default'")
        try:
            weight = None if args.weight == "default" else float(args.weight)
            view = await admin.set_weight(args.id, weight)
        except ValueError as exc:
            raise ConfigError(f"invalid WEIGHT {args.weight!r}: a number in (0, 1000000]") from exc
    elif args.action == "disable":
        try:
            view = await admin.disable(args.id, args.reason)
        except ValueError as exc:
            raise ConfigError(f"invalid --reason: {exc}") from exc
    else:
        view = await getattr(admin, args.action)(args.id)
    if _wants_json(args):
        return _json(view)
    summary = await admin.summary()
    return f"{_done(args, view, admin.pool.name)}\n\n{render_status(summary, [view])}"


def _done(args: argparse.Namespace, view: SessionView, pool: str) -> str:
    """What an action did, in a sentence."""
    name = f"session {view.id} of pool {pool}"
    if args.action == "drain":
        out = f"; the {view.in_flight} leases out finish first" if view.in_flight else ""
        return f"{name} drained: no new leases{out}"
    if args.action == "disable":
        return f"{name} disabled for the whole fleet ({args.reason})"
    if args.action == "enable":
        return f"{name} enabled: back in use"
    if args.action == "reset":
        return f"{name} reset: cooldown, breaker and counters cleared"
    weight = "its configured weight" if view.weight_override is None else f"{view.weight:g}"
    return f"{name} now weighs {weight}"


async def _run(
    settings: Settings, args: argparse.Namespace, snapshot: bytes | None, *, every_pool: bool
) -> str:
    async with _admin(settings) as admin:
        if args.command == "status":
            as_json = _wants_json(args)
            if args.watch:
                await _watch(admin, max(0.2, args.watch), as_json=as_json, every_pool=every_pool)
            return await _status(admin, as_json, every_pool=every_pool)
        if args.command == "sessions":
            return await _session_action(admin, args)
        if args.command == "export":
            return _json(await export_state(admin))
        assert snapshot is not None
        count = await import_state(admin, parse_snapshot(snapshot))
        if _wants_json(args):
            return _json({"pool": admin.pool.name, "imported": count})
        return f"imported the health state of {count} sessions into pool {admin.pool.name}"


def run_operator(settings: Settings, args: argparse.Namespace, *, pool_given: bool = True) -> int:
    """Run one operator command; 0 on success, 1 when it failed (the message says why).
    ``pool_given``: POOL was set; without it ``status`` shows every recorded pool."""
    try:
        snapshot = None
        if args.command == "import":
            snapshot = sys.stdin.buffer.read() if args.file == "-" else Path(args.file).read_bytes()
        text = asyncio.run(_run(settings, args, snapshot, every_pool=not pool_given))
        if args.command == "export" and args.output:
            Path(args.output).write_text(text + "\n", encoding="utf-8")
            done = {"pool": settings.pool, "output": args.output}
            text = (
                _json(done)
                if _wants_json(args)
                else f"exported pool {settings.pool} to {args.output}"
            )
        print(text)
    except UnknownSession as exc:
        print(f"session-broker: {exc}", file=sys.stderr)
        return 1
    except (SnapshotError, OSError) as exc:
        print(f"session-broker: {args.command}: {exc}", file=sys.stderr)
        return 1
    except ConfigError:
        raise
    except BrokerError as exc:
        print(f"session-broker: {args.command}: {exc}", file=sys.stderr)
        return 1
    return 0
