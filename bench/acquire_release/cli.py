"""The acquire+release benchmark's command line: options, a private redis-server unless one is
given, the run, the report."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from redis.asyncio import Redis

import bench.acquire_release
import broker
from bench.acquire_release.baseline import checkout
from bench.acquire_release.counters import ADMIN_CLIENT_NAME
from bench.acquire_release.measure import Options, run_all
from bench.acquire_release.report import describe, table, verdict, write_json
from bench.acquire_release.workers import quiet_broker_logs
from bench.processes import private_redis

DEFAULT_SIZES = (10, 1_000, 10_000)


def _sizes(value: str) -> tuple[int, ...]:
    sizes = tuple(sorted({int(part.replace("_", "")) for part in value.split(",") if part}))
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError("give pool sizes >= 1, comma-separated")
    return sizes


def _strategies(value: str) -> tuple[broker.Strategy, ...]:
    if value == "all":
        return tuple(broker.Strategy)
    try:
        return tuple(broker.Strategy(part) for part in value.split(",") if part)
    except ValueError as exc:
        names = ", ".join(s.value for s in broker.Strategy)
        raise argparse.ArgumentTypeError(f"{exc}; choose from {names} or 'all'") from exc


def parse_args(argv: Sequence[str] | None) -> tuple[Options, str | None, str, Path | None]:
    summary = (bench.acquire_release.__doc__ or "").split("\n\n")[0]
    parser = argparse.ArgumentParser(prog="python -m bench.acquire_release", description=summary)
    parser.add_argument(
        "--redis-url",
        default=os.environ.get("REDIS_URL"),
        help="use this Redis (default: $REDIS_URL, else start a private redis-server on a free "
        "port). Its stats are reset (CONFIG RESETSTAT) and SLOWLOG is used during the run.",
    )
    parser.add_argument("--redis-server", default="redis-server", help="redis-server executable")
    parser.add_argument("--sizes", type=_sizes, default=DEFAULT_SIZES, help="pool sizes")
    parser.add_argument(
        "--strategies", type=_strategies, default=tuple(broker.Strategy), help="or 'all'"
    )
    parser.add_argument("--processes", type=int, default=2, help="worker processes")
    parser.add_argument("--clients", type=int, default=16, help="concurrent clients in total")
    parser.add_argument(
        "--duration",
        type=float,
        default=5.0,
        help="measured seconds per strategy and pool size, split over --rounds",
    )
    parser.add_argument(
        "--rounds", type=int, default=3, help="interleaved rounds over the pool sizes"
    )
    parser.add_argument("--warmup", type=float, default=0.5, help="seconds of warm-up per run")
    parser.add_argument(
        "--audit-pairs", type=int, default=10, help="pairs per client in the SLOWLOG audit; 0: none"
    )
    parser.add_argument(
        "--tiers",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also measure each strategy with priority tiers and unit quotas on",
    )
    parser.add_argument(
        "--baseline",
        metavar="REF",
        help="also measure the broker of this git commit (e.g. a release tag), in the same run, "
        "as rows <strategy>@REF; the bars are judged on this checkout's rows",
    )
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    if not 1 <= args.processes <= args.clients:
        parser.error("need 1 <= --processes <= --clients")
    if args.rounds < 1 or args.duration <= 0:
        parser.error("need --rounds >= 1 and --duration > 0")
    options = Options(
        sizes=args.sizes,
        strategies=args.strategies,
        processes=args.processes,
        clients=args.clients,
        duration_s=args.duration,
        rounds=args.rounds,
        warmup_s=args.warmup,
        audit_pairs=args.audit_pairs,
        tiers=args.tiers,
        baseline=args.baseline,
    )
    return options, args.redis_url, args.redis_server, args.json


async def _redis_version(redis_url: str) -> str:
    client = Redis.from_url(redis_url, decode_responses=True, client_name=ADMIN_CLIENT_NAME)
    try:
        return f"v{(await client.info('server'))['redis_version']}"
    finally:
        await client.aclose()


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    options, redis_url, redis_server, json_path = parse_args(argv)
    quiet_broker_logs()
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        with contextlib.ExitStack() as stack:
            url = redis_url or stack.enter_context(private_redis(redis_server))
            copy = stack.enter_context(checkout(options.baseline)) if options.baseline else None
            header = describe(options, redis_url, asyncio.run(_redis_version(url)))
            print(f"running: {header}", file=sys.stderr, flush=True)
            rows = asyncio.run(run_all(url, options, copy))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    result = verdict(rows)
    print(header)
    print(table(rows))
    print("\n".join(result.lines))
    if json_path is not None:
        write_json(json_path, header, rows, result)
    return 0 if result.ok else 1
