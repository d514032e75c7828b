"""Slow clients: many clients that send their request headers and then stall their body, against
one replica whose sessions have a concurrency limit.

The bar (issue 14): ``max_concurrency`` holds for every live request, however long its body takes
(its lease is renewed while the request is live, also past LEASE_TTL), and no stalled client
holds a lease, an upstream connection or a file descriptor longer than BODY_TIMEOUT.

What runs, all on 127.0.0.1 and stopped at exit: a private ``redis-server``, the simulated
upstream (``python -m proxy.testing.upstream``) and one replica (``python -m proxy``) with
``--sessions`` sessions of ``--max-concurrency`` each, ``LEASE_TTL=--lease-ttl`` and
``BODY_TIMEOUT=--body-timeout``.

Each repeat opens ``--clients`` connections spread evenly over ``--arrival`` seconds (longer than
the lease TTL, so a lease that expired under a live request would let later arrivals in); each
sends ``POST /echo`` headers with ``Content-Length: 1000`` and 10 bytes of body, then nothing.
With QUEUE_TIMEOUT=0 a request either holds a lease or is refused at once (503), so the stalled
clients that have no answer yet are the live requests holding leases. Sampled every 100 ms:
those (the peak, against the sessions' slots), the store's ``in_flight`` summed over sessions,
and the replica's open file descriptors (from ``/proc``). Reported: the peak of live leased
requests over the slots (the bar: <= 1.00), the answers by status, the seconds from the last
arrival to the last answer (bounded by BODY_TIMEOUT), and the replica's peak and final
descriptors over its idle count, in the same run.

Run from the repository root with the project installed: ``python -m bench.slow_clients``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import redis

from bench.processes import Child, Processes, processes, start_redis, start_replica, start_upstream
from broker.keys import PoolKeys

HEAD = b"POST /echo HTTP/1.1\r\nHost: bench\r\nContent-Length: 1000\r\n\r\n" + b"x" * 10
SAMPLE_S = 0.1
#: How long a refused client may take to get its 503 before it counts as holding a lease.
SETTLE_S = 0.3


@dataclass(frozen=True)
class Repeat:
    slots: int
    peak_live_leased: int
    peak_store_in_flight: int
    statuses: dict[str, int]
    last_answer_after_s: float
    fds_idle: int
    fds_peak: int
    fds_after: int

    @property
    def over_slots(self) -> float:
        return self.peak_live_leased / self.slots


def open_fds(child: Child) -> int:
    return len(os.listdir(f"/proc/{child.process.pid}/fd"))


class Stalled:
    """One client that sends its headers and 10 bytes of body, then waits for its answer."""

    def __init__(self) -> None:
        self.opened_at = time.monotonic()
        self.status: str | None = None

    async def run(self, port: int) -> None:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError as exc:
            self.status = type(exc).__name__
            return
        try:
            writer.write(HEAD)
            await writer.drain()
            line = await reader.readline()
            self.status = line.split(b" ")[1].decode() if line.count(b" ") >= 2 else "closed"
        except OSError as exc:
            self.status = type(exc).__name__
        finally:
            writer.close()


def store_in_flight(client: redis.Redis, ids: Sequence[str]) -> int:
    keys = PoolKeys("default")
    values = [client.hget(keys.session(i), "in_flight") for i in ids]
    return sum(int(v or 0) for v in values)


@dataclass
class Peaks:
    live_leased: int = 0
    store_in_flight: int = 0
    fds: int = 0


async def sample(
    clients: list[Stalled], peaks: Peaks, replica: Child, store: redis.Redis, ids: list[str]
) -> None:
    """Every SAMPLE_S until cancelled. A client refused at once (503) needs a moment to get its
    answer: only those open for more than SETTLE_S count as live."""
    while True:
        now = time.monotonic()
        live = sum(1 for c in clients if c.status is None and now - c.opened_at > SETTLE_S)
        peaks.live_leased = max(peaks.live_leased, live)
        peaks.store_in_flight = max(peaks.store_in_flight, store_in_flight(store, ids))
        peaks.fds = max(peaks.fds, open_fds(replica))
        await asyncio.sleep(SAMPLE_S)


async def one_repeat(
    args: argparse.Namespace, port: int, replica: Child, store: redis.Redis, ids: list[str]
) -> Repeat:
    fds_idle = open_fds(replica)
    clients: list[Stalled] = []
    peaks = Peaks()
    sampler = asyncio.create_task(sample(clients, peaks, replica, store, ids))
    tasks: list[asyncio.Task[None]] = []
    started = time.monotonic()
    gap = args.arrival / args.clients
    for index in range(args.clients):
        await asyncio.sleep(max(0.0, started + index * gap - time.monotonic()))
        clients.append(Stalled())
        tasks.append(asyncio.create_task(clients[-1].run(port)))
    last_arrival = time.monotonic()
    await asyncio.wait(tasks, timeout=args.body_timeout + 30)
    last_answer = time.monotonic() - last_arrival
    sampler.cancel()
    for task in tasks:
        task.cancel()
    await asyncio.sleep(0.5)  # the replica closes what it answered
    return Repeat(
        slots=args.sessions * args.max_concurrency,
        peak_live_leased=peaks.live_leased,
        peak_store_in_flight=peaks.store_in_flight,
        statuses=dict(Counter(c.status or "no answer" for c in clients)),
        last_answer_after_s=round(last_answer, 2),
        fds_idle=fds_idle,
        fds_peak=peaks.fds,
        fds_after=open_fds(replica),
    )


def start_targets(scope: Processes, args: argparse.Namespace) -> tuple[int, Child, str, list[str]]:
    redis_url = start_redis(scope)
    upstream, upstream_url = start_upstream(scope)
    ids = [f"s{i}" for i in range(args.sessions)]
    sessions = scope.workdir / "sessions.json"
    sessions.write_text(
        json.dumps(
            {
                "sessions": [
                    {"id": i, "secret": f"sk-slow-{i}", "max_concurrency": args.max_concurrency}
                    for i in ids
                ]
            }
        )
    )
    env = {
        "REDIS_URL": redis_url,
        "UPSTREAM_URL": upstream_url,
        "SESSIONS_FILE": str(sessions),
        "LEASE_TTL": str(args.lease_ttl),
        "BODY_TIMEOUT": str(args.body_timeout),
        "QUEUE_TIMEOUT": "0",
        "LOG_LEVEL": "warning",
    }
    replica, port, _ = start_replica(scope, env)
    scope.wait_ready([upstream, replica])
    return port, replica, redis_url, ids


def table(repeats: Sequence[Repeat]) -> str:
    lines = [
        "| repeat | slots | peak live leased | / slots | peak store in_flight | answers | "
        "last answer after last arrival (s) | fds idle / peak / after |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for index, r in enumerate(repeats, 1):
        answers = ", ".join(f"{k}: {v}" for k, v in sorted(r.statuses.items()))
        lines.append(
            f"| {index} | {r.slots} | {r.peak_live_leased} | {r.over_slots:.2f} | "
            f"{r.peak_store_in_flight} | {answers} | {r.last_answer_after_s} | "
            f"{r.fds_idle} / {r.fds_peak} / {r.fds_after} |"
        )
    return "\n".join(lines)


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.slow_clients", description=__doc__)
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--sessions", type=int, default=10)
    parser.add_argument("--max-concurrency", type=int, default=4)
    parser.add_argument("--lease-ttl", type=float, default=1.0)
    parser.add_argument("--body-timeout", type=float, default=6.0)
    parser.add_argument("--arrival", type=float, default=4.0, help="seconds to open all clients")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--keep-logs", type=Path, help="keep the children's logs here")
    return parser.parse_args(argv)


async def _run(args: argparse.Namespace, scope: Processes) -> list[Repeat]:
    port, replica, redis_url, ids = start_targets(scope, args)
    store = redis.Redis.from_url(redis_url)
    try:
        return [await one_repeat(args, port, replica, store, ids) for _ in range(args.repeats)]
    finally:
        store.close()


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    with processes(args.keep_logs) as scope:
        repeats = asyncio.run(_run(args, scope))
    print(table(repeats))
    ratios = [r.over_slots for r in repeats]
    bound = max(r.last_answer_after_s for r in repeats)
    ok = max(ratios) <= 1.0 and bound <= args.body_timeout + 2
    print(
        f"{'PASS' if ok else 'FAIL'}  peak live leased requests / slots: median "
        f"{statistics.median(ratios):.2f} (min {min(ratios):.2f}, max {max(ratios):.2f}; bar "
        f"<= 1.00); last answer {bound:.1f} s after the last arrival (BODY_TIMEOUT "
        f"{args.body_timeout:g} s, bar <= BODY_TIMEOUT + 2 s)"
    )
    if args.json is not None:
        data = {
            "settings": vars(args) | {"json": None, "keep_logs": None},
            "repeats": [asdict(r) | {"over_slots": r.over_slots} for r in repeats],
            "pass": ok,
        }
        args.json.write_text(json.dumps(data, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
