"""One run of the acquire+release benchmark: for each strategy, a fresh pool per size, measured
in interleaved slices with Redis's stats reset before each, then the SLOWLOG audit."""

from __future__ import annotations

import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from redis.asyncio import Redis

import broker
from bench.acquire_release.counters import (
    ADMIN_CLIENT_NAME,
    AuditResult,
    Row,
    Sample,
    make_row,
    read_audit,
    redis_cpu_s,
)
from bench.acquire_release.workers import Audit, Prepare, Run, Workers

#: Priority tiers of the ``+tiers`` rows (sessions spread over them round the clock).
BENCH_TIERS = 3
#: Each session's tpm in the ``+tiers`` rows: large enough that the benchmark never spends it,
#: so every pair still finds a session, while the scripts do all the unit bookkeeping.
BENCH_TPM = 10**9
#: The rpm quota of every session in those rows: high enough that a session is rarely out of
#: quota at these rates, so the GCRA and the quota set's bookkeeping run on every acquire
#: without throttling the benchmark.
BENCH_RPM = 6_000_000.0
#: The burst of that quota. The store's clock moves in whole ms, so with a burst of 1 a session
#: takes at most one lease per ms however high its rpm; at these rates 16 clients would then
#: find every session of a small pool at quota now and then.
BENCH_BURST = 1000
#: Slack between telling the workers when to start and the start, so all of them are waiting.
START_DELAY_S = 0.1
#: Warm-up before the second and later slices of a pool (scripts and connections are warm already).
REWARM_S = 0.1
#: One pair makes about 45 commands inside the scripts; SLOWLOG room for several times that.
SLOWLOG_ENTRIES_PER_PAIR = 300


@dataclass(frozen=True)
class Options:
    sizes: tuple[int, ...]
    strategies: tuple[broker.Strategy, ...]
    processes: int
    clients: int
    duration_s: float
    rounds: int
    warmup_s: float
    audit_pairs: int
    tiers: bool = True
    #: A git ref whose broker is measured too, in the same run (rows ``<strategy>@<ref>``).
    baseline: str | None = None


async def _sync_pool(
    admin: Redis, name: str, strategy: broker.Strategy, size: int, tiers: bool
) -> None:
    settings = broker.BrokerSettings(pool=name, strategy=strategy)
    sessions = [
        broker.Session(
            id=f"s{i:05d}",
            secret=f"bench-{i}",
            priority=i % BENCH_TIERS if tiers else 0,
            rpm=BENCH_RPM if tiers else None,
            burst=BENCH_BURST if tiers else 1,
            tpm=BENCH_TPM if tiers else None,
        )
        for i in range(size)
    ]
    await broker.Pool(admin, settings).sync(sessions)


async def _drop_pool(admin: Redis, name: str) -> None:
    keys = [key async for key in admin.scan_iter(match=f"sb:{{{name}}}:*", count=1000)]
    for start in range(0, len(keys), 1000):
        await admin.unlink(*keys[start : start + 1000])


async def measure_slice(
    admin: Redis, workers: Workers, prepare: Prepare, duration_s: float, sample: Sample
) -> None:
    """Warm up on the pool, reset Redis's stats, run all clients for ``duration_s``, count."""
    await workers.do(prepare)
    cpu_before = redis_cpu_s(await admin.info("cpu"))
    await admin.config_resetstat()
    start_at = time.monotonic() + START_DELAY_S
    tallies = await workers.do(Run(start_at, start_at + duration_s))
    info = await admin.info("commandstats", "cpu")
    sample.add(max(t.finished_at for t in tallies) - start_at, tallies, info)
    sample.redis_cpu_s += redis_cpu_s(info) - cpu_before


async def audit(
    admin: Redis, workers: Workers, prepare: Prepare, pairs_per_client: int, clients: int
) -> AuditResult:
    """A fixed number of pairs with SLOWLOG logging every command; restores SLOWLOG after."""
    await workers.do(prepare)
    saved = {str(k): str(v) for k, v in (await admin.config_get("slowlog-*")).items()}
    room = pairs_per_client * clients * SLOWLOG_ENTRIES_PER_PAIR
    await admin.config_set("slowlog-max-len", max(room, int(saved["slowlog-max-len"])))
    await admin.config_set("slowlog-log-slower-than", 0)
    await admin.slowlog_reset()
    try:
        tallies = await workers.do(Audit(pairs_per_client))
        logged = await admin.slowlog_len()
        entries = await admin.slowlog_get(-1)
    finally:
        for key, value in saved.items():
            await admin.config_set(key, value)
        await admin.slowlog_reset()
    return read_audit(entries, tallies, complete=logged < room)


def _rotated(sizes: Sequence[int], round_: int) -> list[int]:
    """The sizes in the order of one round; over as many rounds as sizes, each comes first once."""
    shift = round_ % len(sizes)
    return [*sizes[shift:], *sizes[:shift]]


async def measure_strategy(
    admin: Redis,
    workers: Workers,
    options: Options,
    strategy: broker.Strategy,
    tiers: bool,
    code: str = "",
) -> list[Row]:
    """Every pool size of one strategy, in interleaved rounds so drift in the machine's load
    (other processes, CPU frequency) falls on every size alike rather than on the last one.
    With ``tiers``, the pools have priority tiers and unit quotas, and releases report units.
    ``code``: the baseline's ref when ``workers`` run it (no audit: it knows this code's
    functions only)."""
    run_id = uuid.uuid4().hex[:8]
    label = f"{strategy.value}+tiers" if tiers else strategy.value
    label += f"@{code}" if code else ""
    names = {size: f"bench-{run_id}-{label}-{size}" for size in options.sizes}
    samples = {size: Sample() for size in options.sizes}
    audits: dict[int, AuditResult] = {}
    try:
        for size, name in names.items():
            await _sync_pool(admin, name, strategy, size, tiers)
        for round_ in range(options.rounds):
            warmup_s = options.warmup_s if round_ == 0 else REWARM_S
            for size in _rotated(options.sizes, round_):
                prepare = Prepare(names[size], strategy, warmup_s, tiers)
                slice_s = options.duration_s / options.rounds
                await measure_slice(admin, workers, prepare, slice_s, samples[size])
        for size, name in names.items():
            if options.audit_pairs > 0 and not code:
                prepare = Prepare(name, strategy, 0.0, tiers)
                audits[size] = await audit(
                    admin, workers, prepare, options.audit_pairs, options.clients
                )
    finally:
        for name in names.values():
            await _drop_pool(admin, name)
    return [
        make_row(label, size, samples[size], audits.get(size), code=code) for size in options.sizes
    ]


def add_ratios(rows: Sequence[Row]) -> None:
    """Each row against the smallest pool size of the same strategy, measured in the same run."""
    for row in rows:
        base = min((r for r in rows if r.strategy == row.strategy), key=lambda r: r.size)
        row.ratio = row.pairs_per_s / base.pairs_per_s
        row.cost_ratio = row.usec_per_call / max(base.usec_per_call, 1e-9)


async def run_all(redis_url: str, options: Options, baseline: Path | None = None) -> list[Row]:
    """Every strategy; with ``baseline`` (the broker of ``options.baseline`` copied there), each
    also on that code, right after this code's rows of the same strategy."""
    admin = Redis.from_url(redis_url, decode_responses=True, client_name=ADMIN_CLIENT_NAME)
    codes = {"": Workers(redis_url, options.processes, options.clients)}
    if baseline is not None and options.baseline:
        codes[options.baseline] = Workers(
            redis_url, options.processes, options.clients, baseline=baseline
        )
    rows: list[Row] = []
    finished = False
    try:
        for strategy in options.strategies:
            for tiers in (False, True) if options.tiers else (False,):
                for code, workers in codes.items():
                    rows += await measure_strategy(admin, workers, options, strategy, tiers, code)
            print(f"  measured {strategy.value}", file=sys.stderr, flush=True)
        finished = True
    finally:
        for workers in codes.values():
            workers.close(graceful=finished)
        await admin.aclose()
    add_ratios(rows)
    return rows
