"""The ``session-broker`` command.

``serve`` runs a replica (the default; also ``python -m proxy``); ``demo`` shows the whole thing
working on this machine with no Redis and no upstream of your own; ``status``, ``sessions``,
``export`` and ``import`` operate the pool in the fleet's Redis (see proxy/ops/commands.py).
Settings come from flags, the environment and ``--config FILE`` (proxy/config/loading.py).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from broker import ConfigError, StoreError
from proxy.config.flags import add_config_flag, add_flags
from proxy.config.loading import read_settings
from proxy.config.settings import STORE_SETTINGS
from proxy.ops.commands import COMMANDS, add_operator_commands, run_operator
from proxy.ops.endpoints import package_version
from proxy.replica.leasing import check_store
from proxy.telemetry.logs import REDACTOR, configure_logging

_SERVE_USAGE = "session-broker serve [-h] [--config FILE] [--SETTING VALUE ...]"


def _parsers() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """The command's parser, and each subcommand's by name."""
    parser = argparse.ArgumentParser(
        prog="session-broker",
        description="Lease upstream credentials from a shared pool to a fleet of proxy replicas.",
        epilog="Every setting is also an environment variable of the name shown and a key of "
        "the --config file; a flag wins over the variable, the variable over the file. "
        "'session-broker COMMAND --help' shows a command's settings.",
    )
    parser.add_argument(
        "-V", "--version", action="version", version=f"session-broker {package_version()}"
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    serve = commands.add_parser(
        "serve",
        help="run a proxy replica (the default)",
        usage=_SERVE_USAGE,
        description="Run a proxy replica. Each setting below is a flag, an environment "
        "variable of the name shown, and a key of the --config file, in that precedence.",
    )
    add_config_flag(serve)
    add_flags(serve)
    demo = commands.add_parser("demo", help="a self-contained demonstration on this machine")
    demo.add_argument("--seconds", type=float, default=5.0, help="how long to drive traffic")
    demo.add_argument("--concurrency", type=int, default=8, help="concurrent demo clients")
    by_name = {"serve": serve, "demo": demo}
    for operator in add_operator_commands(commands):
        add_config_flag(operator)
        add_flags(operator, only=STORE_SETTINGS)
        by_name[operator.prog.split()[-1]] = operator
    return parser, by_name


def _parser() -> argparse.ArgumentParser:
    return _parsers()[0]


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    """The arguments; an unknown one is answered with its subcommand's usage (exit 2)."""
    parser, by_name = _parsers()
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        where = by_name.get(args.command or "", parser)
        where.error(f"unrecognized arguments: {' '.join(unknown)}")
    return args


def _config(args: argparse.Namespace) -> Path | None:
    name: str | None = getattr(args, "config_file", None)
    return Path(name) if name else None


def _operate(args: argparse.Namespace) -> int:
    loaded = read_settings(os.environ, args, config=_config(args), only=STORE_SETTINGS)
    settings = loaded.settings
    REDACTOR.add(settings.secret_values)
    # A terminal command: the transitions its reads bring about are news to nobody, and its
    # output is for a person (or a script), not a log collector -- unless told otherwise.
    level = settings.log_level if "LOG_LEVEL" in loaded.given else "error"
    configure_logging(level, settings.log_format if "LOG_FORMAT" in loaded.given else "console")
    if settings.redis_url is not None or settings.redis_sentinels:
        asyncio.run(check_store(settings.broker(), outage_ok=False))
    return run_operator(settings, args, pool_given="POOL" in loaded.given)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    try:
        if args.command == "demo":
            from proxy.demo import run_demo

            configure_logging("error", "console")
            return run_demo(seconds=args.seconds, concurrency=args.concurrency)
        if args.command in COMMANDS:
            return _operate(args)
        serving = args if args.command == "serve" else None
        settings = read_settings(os.environ, serving, config=_config(args)).settings
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
