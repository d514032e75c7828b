"""The ``session-broker`` command.

``serve`` runs a replica (the default; also ``python -m proxy``); ``demo`` shows the whole thing
working on this machine with no Redis and no upstream of your own; ``status``, ``sessions``,
``export`` and ``import`` operate the pool in the fleet's Redis (see proxy/ops/commands.py).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence

from broker import ConfigError, StoreError
from proxy.config.settings import STORE_SETTINGS, add_flags, load_settings
from proxy.ops.commands import COMMANDS, add_operator_commands, run_operator
from proxy.replica.leasing import check_store
from proxy.telemetry.logs import REDACTOR, configure_logging


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="session-broker",
        description="Lease upstream credentials from a shared pool to a fleet of proxy replicas.",
        epilog="Every setting is also an environment variable of the name shown; a flag wins.",
    )
    commands = parser.add_subparsers(dest="command")
    serve = commands.add_parser("serve", help="run a proxy replica (the default)")
    add_flags(serve)
    demo = commands.add_parser("demo", help="a self-contained demonstration on this machine")
    demo.add_argument("--seconds", type=float, default=5.0, help="how long to drive traffic")
    demo.add_argument("--concurrency", type=int, default=8, help="concurrent demo clients")
    for operator in add_operator_commands(commands):
        add_flags(operator, only=STORE_SETTINGS)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "demo":
            from proxy.demo import run_demo

            configure_logging("error", "console")
            return run_demo(seconds=args.seconds, concurrency=args.concurrency)
        if args.command in COMMANDS:
            settings = load_settings(os.environ, args, only=STORE_SETTINGS)
            REDACTOR.add(settings.secret_values)
            # A terminal command: the transitions its reads bring about are news to nobody.
            explicit = os.environ.get("LOG_LEVEL") or getattr(args, "LOG_LEVEL", None)
            configure_logging(settings.log_level if explicit else "warning", settings.log_format)
            given = bool(os.environ.get("POOL") or getattr(args, "POOL", None))
            if settings.redis_url is not None or settings.redis_sentinels:
                asyncio.run(check_store(settings.broker(), outage_ok=False))
            return run_operator(settings, args, pool_given=given)
        settings = load_settings(os.environ, args if args.command == "serve" else None)
        configure_logging(settings.log_level, settings.log_format)
        from proxy.serve import serve_forever

        serve_forever(settings)
    except ConfigError as exc:
        print(f"session-broker: configuration error: {exc}", file=sys.stderr)
        return 2
    except StoreError as exc:
        print(f"session-broker: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"session-broker: cannot start: {exc.strerror or exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
