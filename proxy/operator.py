"""The operator commands, reading and writing the fleet's Redis directly (from a laptop too):

``status`` (a table; ``--json``; ``--watch``), ``sessions enable|disable|drain|reset|weight ID``,
``export`` and ``import`` of the pool's health state as JSON. They need REDIS_URL (or the
Sentinel / Cluster settings) and POOL; never UPSTREAM_URL or the sessions' secrets.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import msgspec

from broker import BrokerError, ConfigError, Pool, UnknownSession, open_store
from broker.admin import PoolAdmin
from broker.snapshot import SnapshotError, export_state, import_state, parse_snapshot
from proxy.settings import Settings
from proxy.status import render_status

__all__ = ["add_operator_commands", "run_operator"]

#: Commands of this module, as the CLI names them.
COMMANDS = ("status", "sessions", "export", "import")
ACTIONS = ("enable", "disable", "drain", "reset", "weight")


def add_operator_commands(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
) -> list[argparse.ArgumentParser]:
    """The operator subcommands; returns their parsers (the CLI adds the store's flags)."""
    status = commands.add_parser("status", help="the pool's sessions as a table (from Redis)")
    status.add_argument("--json", action="store_true", help="JSON for scripts")
    status.add_argument(
        "--watch", nargs="?", type=float, const=2.0, metavar="SECONDS", help="refresh every 2 s"
    )
    sessions = commands.add_parser("sessions", help="act on one session, fleet-wide")
    sessions.add_argument("action", choices=ACTIONS)
    sessions.add_argument("id", help="session id")
    sessions.add_argument("weight", nargs="?", help="for weight: a number > 0, or 'default'")
    sessions.add_argument("--reason", default="operator", help="for disable: why (shown)")
    sessions.add_argument("--json", action="store_true", help="JSON for scripts")
    export = commands.add_parser("export", help="the pool's health state as JSON")
    export.add_argument("--output", "-o", help="file to write (default: standard output)")
    restore = commands.add_parser("import", help="load health state exported before")
    restore.add_argument("file", help="the JSON file, or - for standard input")
    return [status, sessions, export, restore]


@asynccontextmanager
async def _admin(settings: Settings) -> AsyncIterator[PoolAdmin]:
    if settings.redis_url is None and not settings.redis_sentinels:
        raise ConfigError(
            "REDIS_URL is not set: the operator commands work on the fleet's Redis "
            "(set REDIS_URL, or REDIS_SENTINELS)"
        )
    broker_settings = settings.broker()
    store = open_store(broker_settings)
    try:
        yield PoolAdmin(Pool(store, broker_settings))
    finally:
        await store.aclose()


async def _status(admin: PoolAdmin, as_json: bool) -> str:
    summary = await admin.summary()
    sessions = await admin.sessions()
    if as_json:
        document = {"pool": admin.pool.name, "now_ms": summary.now_ms, "summary": summary,
                    "sessions": sessions}  # fmt: skip
        return msgspec.json.format(msgspec.json.encode(document)).decode()
    return render_status(summary, sessions)


async def _watch(admin: PoolAdmin, every_s: float) -> None:
    while True:
        table = await _status(admin, as_json=False)
        sys.stdout.write("\x1b[H\x1b[2J" + table + f"\n\n(every {every_s:g} s; Ctrl-C to stop)\n")
        sys.stdout.flush()
        await asyncio.sleep(every_s)


async def _session_action(admin: PoolAdmin, args: argparse.Namespace) -> str:
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
    if args.json:
        return msgspec.json.format(msgspec.json.encode(view)).decode()
    summary = await admin.summary()
    return render_status(summary, [view])


async def _run(settings: Settings, args: argparse.Namespace, snapshot: bytes | None) -> str:
    async with _admin(settings) as admin:
        if args.command == "status":
            if args.watch:
                await _watch(admin, max(0.2, args.watch))
            return await _status(admin, args.json)
        if args.command == "sessions":
            return await _session_action(admin, args)
        if args.command == "export":
            return msgspec.json.format(msgspec.json.encode(await export_state(admin))).decode()
        assert snapshot is not None
        count = await import_state(admin, parse_snapshot(snapshot))
        return f"imported the health state of {count} sessions into pool {admin.pool.name}"


def run_operator(settings: Settings, args: argparse.Namespace) -> int:
    """Run one operator command; 0 on success, 1 when it failed (the message says why)."""
    try:
        snapshot = None
        if args.command == "import":
            snapshot = sys.stdin.buffer.read() if args.file == "-" else Path(args.file).read_bytes()
        text = asyncio.run(_run(settings, args, snapshot))
        if args.command == "export" and args.output:
            Path(args.output).write_text(text + "\n", encoding="utf-8")
            text = f"exported pool {settings.pool} to {args.output}"
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
        print(f"session-broker: {exc}", file=sys.stderr)
        return 1
    return 0
