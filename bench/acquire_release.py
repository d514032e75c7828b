"""Acquire+release pairs per second against Redis, at several pool sizes and strategies.

The bar (from the issue): at 10,000 sessions at least half the throughput at 10 (acquire must not
scan the pool), and exactly one Redis round trip per acquire and one per release.

How it measures, and why:

* 16 clients (``--clients``) are asyncio tasks spread over ``--processes`` worker processes, each
  with its own store client and Pool. One Python process would be the bottleneck long before
  Redis is, and would hide how the scripts scale.
* Each (strategy, pool size) gets a fresh pool and a warm-up (loads the scripts, so the one
  NOSCRIPT reload of a process happens there, and opens every connection). Its ``--duration``
  seconds are measured in ``--rounds`` slices, the sizes of a strategy taking turns, so a change
  in the machine's load during the run falls on every size alike. Each slice starts with
  ``CONFIG RESETSTAT``; all workers start and stop it at the same monotonic instant.
* Round trips, counted by Redis: ``INFO commandstats`` after the run. Commands a script makes
  count there too, so a command name some script calls is counted as the script's; any other name
  (a HELLO of a new connection, a PING health check, SCRIPT LOAD after a NOSCRIPT) is a round trip
  of the workload and reported as "other". Then an audit of ``--audit-pairs`` pairs per client
  runs with ``SLOWLOG`` logging every command: it tells a client's commands from a script's
  (address ``?:0``) whatever their names, attributes each EVALSHA to acquire or release by the
  script's SHA, and records the Redis time of each (in ``--json`` only: SLOWLOG's own logging of
  the script's commands inflates it).
* Redis-side cost: ``usec_per_call`` of EVALSHA (the whole script, inner commands included) and the
  number of commands the scripts ran per pair. Client throughput on a small machine mostly shows
  Python; these two show whether a script's work grows with the pool.

* Tiers and quotas: each strategy is measured twice in the same run, as configured by default
  and (row ``<strategy>+tiers``) with every session in one of three priority tiers, an ``rpm``
  and a ``tpm`` on each (too large to run out) and the units of each pair reported at release,
  so the bars are checked with those features on. ``--no-tiers`` measures the plain pools only.

Run from the repository root with the project installed: ``python -m bench.acquire_release``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import logging
import multiprocessing
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from types import FrameType
from typing import Any

import structlog
from redis.asyncio import Redis

import broker
from bench.processes import die_with_parent, free_port
from broker.preamble import OPERATIONS, source

DEFAULT_SIZES = (10, 1_000, 10_000)
#: The bar: throughput at the largest size over that at the smallest, per strategy.
BAR_RATIO = 0.5
#: Round trips one acquire+release pair may make: one EVALSHA each.
EVALSHA_PER_PAIR = 2
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
#: Units each release reports in the ``+tiers`` rows.
BENCH_UNITS = 100
#: The bench's own Redis connection; its commands are not the workload's.
ADMIN_CLIENT_NAME = "bench-admin"
#: Commands the bench itself sends inside a measured window (the reset that opens it).
HARNESS_COMMANDS = frozenset({"config|resetstat"})
#: Slack between telling the workers when to start and the start, so all of them are waiting.
START_DELAY_S = 0.1
#: Warm-up before the second and later slices of a pool (scripts and connections are warm already).
REWARM_S = 0.1
#: A script's own commands reach SLOWLOG under this address.
SCRIPT_CLIENT_ADDRESS = "?:0"
#: One pair makes about 45 commands inside the scripts; SLOWLOG room for several times that.
SLOWLOG_ENTRIES_PER_PAIR = 300
REDIS_START_TIMEOUT_S = 10.0


def quiet_broker_logs() -> None:
    """The broker logs each session's first state at debug; thousands of lines here."""
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))


# -- a private redis-server ----------------------------------------------------------------------


def _serves_port(proc: subprocess.Popen[bytes], port: int) -> bool:
    """True once ``proc`` answers on ``port`` (not some other server that took the port first)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"INFO server\r\n")
            reply = b""
            while b"process_id:" not in reply or not reply.endswith(b"\r\n"):
                chunk = sock.recv(65536)
                if not chunk:
                    return False
                reply += chunk
    except OSError:
        return False
    found = re.search(rb"process_id:(\d+)", reply)
    return found is not None and int(found[1]) == proc.pid


def _start_redis(executable: str, workdir: str) -> tuple[subprocess.Popen[bytes], int]:
    """Start redis-server on a free port; retry a few ports in case another process took it."""
    log = Path(workdir) / "redis.log"
    for _ in range(3):
        port = free_port()
        argv = [executable, "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
        argv += ["--appendonly", "no", "--dir", workdir, "--logfile", str(log)]
        proc = subprocess.Popen(argv, start_new_session=True, preexec_fn=die_with_parent)
        deadline = time.monotonic() + REDIS_START_TIMEOUT_S
        while proc.poll() is None and time.monotonic() < deadline:
            if _serves_port(proc, port):
                return proc, port
            time.sleep(0.05)
        _stop_redis(proc)
    tail = log.read_text(errors="replace")[-2000:] if log.exists() else "(no log)"
    raise RuntimeError(f"redis-server did not start; its log ends:\n{tail}")


def _stop_redis(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@contextlib.contextmanager
def local_redis(executable: str) -> Iterator[str]:
    """A throwaway redis-server (no persistence) for the duration of the block; yields its URL."""
    found = shutil.which(executable)
    if found is None:
        raise RuntimeError(f"{executable!r} not found on PATH; install Redis or pass --redis-url")
    with tempfile.TemporaryDirectory(prefix="bench-redis-") as workdir:
        proc, port = _start_redis(found, workdir)
        try:
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            _stop_redis(proc)


# -- messages between the coordinator and its workers --------------------------------------------


@dataclass(frozen=True)
class Prepare:
    """Use this pool from now on, and warm up on it for ``warmup_s`` seconds."""

    pool: str
    strategy: broker.Strategy
    warmup_s: float
    units: bool = False  # report units at each release (the pool has unit quotas)


@dataclass(frozen=True)
class Run:
    """Make pairs from ``start_at`` until ``stop_at`` (``time.monotonic``, shared by processes)."""

    start_at: float
    stop_at: float


@dataclass(frozen=True)
class Audit:
    """Make exactly ``pairs_per_client`` pairs on each client."""

    pairs_per_client: int


@dataclass(frozen=True)
class Quit:
    """Close the store and exit."""


Command = Prepare | Run | Audit | Quit


@dataclass
class Tally:
    """What one worker did in one phase. ``pairs`` counts completed acquire+release pairs."""

    pairs: int = 0
    acquires: int = 0
    releases: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    finished_at: float = 0.0
    cpu_s: float = 0.0


def _wake(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


async def _receive(conn: Connection) -> Any:
    """Wait for a message without blocking the event loop (and without a thread to wait for)."""
    if not conn.poll():
        loop = asyncio.get_running_loop()
        readable: asyncio.Future[None] = loop.create_future()
        loop.add_reader(conn.fileno(), _wake, readable)
        try:
            await readable
        finally:
            loop.remove_reader(conn.fileno())
    return conn.recv()


# -- the worker process --------------------------------------------------------------------------


async def _one_pair(pool: broker.Pool, tally: Tally, units: int | None) -> None:
    tally.acquires += 1
    try:
        lease = await pool.acquire()
        tally.releases += 1
        await pool.release(lease, broker.Outcome.SUCCESS, latency_ms=1, units=units)
    except broker.BrokerError as exc:
        tally.errors[type(exc).__name__] += 1
        return
    tally.pairs += 1


async def _pairs_until(pool: broker.Pool, units: int | None, stop_at: float, tally: Tally) -> None:
    while time.monotonic() < stop_at:
        await _one_pair(pool, tally, units)


async def _pairs(pool: broker.Pool, units: int | None, count: int, tally: Tally) -> None:
    for _ in range(count):
        await _one_pair(pool, tally, units)


async def _clients(clients: int, client: Callable[[Tally], Any]) -> Tally:
    """Run ``clients`` concurrent clients, all counting into one tally."""
    tally = Tally()
    cpu_start = time.process_time()
    await asyncio.gather(*(client(tally) for _ in range(clients)))
    tally.finished_at = time.monotonic()
    tally.cpu_s = time.process_time() - cpu_start
    return tally


async def _serve(conn: Connection, redis_url: str, clients: int) -> None:
    store = broker.open_store(broker.BrokerSettings(redis_url=redis_url))
    pools: dict[str, broker.Pool] = {}
    pool: broker.Pool | None = None
    units: int | None = None
    try:
        while not isinstance(command := await _receive(conn), Quit):
            if isinstance(command, Prepare):
                if command.pool not in pools:
                    settings = broker.BrokerSettings(
                        redis_url=redis_url, pool=command.pool, strategy=command.strategy
                    )
                    pools[command.pool] = broker.Pool(store, settings)
                pool = pools[command.pool]
                units = BENCH_UNITS if command.units else None
                stop_at = time.monotonic() + command.warmup_s
                tally = await _clients(clients, partial(_pairs_until, pool, units, stop_at))
            elif isinstance(command, Run) and pool is not None:
                await asyncio.sleep(max(0.0, command.start_at - time.monotonic()))
                run = partial(_pairs_until, pool, units, command.stop_at)
                tally = await _clients(clients, run)
            elif isinstance(command, Audit) and pool is not None:
                audit = partial(_pairs, pool, units, command.pairs_per_client)
                tally = await _clients(clients, audit)
            else:
                raise RuntimeError(f"unexpected command {command!r}")
            conn.send(tally)
    finally:
        await store.aclose()


def worker_main(conn: Connection, redis_url: str, clients: int) -> None:
    """Entry point of a worker process: serve the coordinator's commands until Quit or EOF."""
    quiet_broker_logs()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the coordinator decides when to stop
    with contextlib.suppress(EOFError, BrokenPipeError):
        asyncio.run(_serve(conn, redis_url, clients))


class Workers:
    """The worker processes, driven in lock step: send one command to all, collect all tallies."""

    def __init__(self, redis_url: str, processes: int, clients: int) -> None:
        context = multiprocessing.get_context("spawn")
        self._conns: list[Connection] = []
        self._procs: list[BaseProcess] = []
        for index in range(processes):
            share = clients // processes + (index < clients % processes)
            parent_end, child_end = context.Pipe()
            proc = context.Process(
                target=worker_main, args=(child_end, redis_url, share), daemon=True
            )
            proc.start()
            child_end.close()
            self._conns.append(parent_end)
            self._procs.append(proc)

    async def do(self, command: Command) -> list[Tally]:
        for conn in self._conns:
            conn.send(command)
        return [await _receive(conn) for conn in self._conns]

    def close(self, *, graceful: bool) -> None:
        """Ask the workers to quit (graceful) or stop them now (interrupted, or a failure)."""
        for conn in self._conns:
            with contextlib.suppress(OSError):
                if graceful:
                    conn.send(Quit())
                conn.close()
        for proc in self._procs:
            proc.join(timeout=5 if graceful else 0)
            if proc.is_alive():
                proc.terminate()
                proc.join()


# -- reading Redis's counters --------------------------------------------------------------------


def script_command_names() -> frozenset[str]:
    """Every command name a script calls (``redis.call('NAME', ...)``), lower case."""
    pattern = re.compile(r"""redis\.p?call\(\s*['"]([A-Za-z]+)['"]""")
    names = {name.lower() for op in OPERATIONS for name in pattern.findall(source(op))}
    return frozenset(names)


def script_shas() -> dict[str, str]:
    """SHA1 of each script as sent (prelude + body) -> its operation name."""
    return {
        hashlib.sha1(source(op).encode(), usedforsecurity=False).hexdigest(): op
        for op in OPERATIONS
    }


def command_calls(info: dict[str, Any]) -> dict[str, int]:
    """``INFO commandstats`` as command name -> calls."""
    prefix = "cmdstat_"
    return {k[len(prefix) :]: int(v["calls"]) for k, v in info.items() if k.startswith(prefix)}


def redis_cpu_s(info: dict[str, Any]) -> float:
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])


def _text(value: bytes | str) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else value


@dataclass
class AuditResult:
    """Client commands seen in SLOWLOG during the audit, and the Redis time of each script."""

    pairs: int
    acquires: int
    releases: int
    evalsha: dict[str, int]
    other: dict[str, int]
    acquire_usec: float
    release_usec: float
    complete: bool

    @property
    def ok(self) -> bool:
        expected = {"acquire": self.acquires, "release": self.releases}
        return self.complete and not self.other and self.evalsha == expected


def read_audit(
    entries: Sequence[dict[str, Any]], tallies: Sequence[Tally], complete: bool
) -> AuditResult:
    shas = script_shas()
    evalsha: Counter[str] = Counter()
    usec: Counter[str] = Counter()
    other: Counter[str] = Counter()
    for entry in entries:
        if _text(entry["client_name"]) == ADMIN_CLIENT_NAME:
            continue
        if _text(entry["client_address"]) == SCRIPT_CLIENT_ADDRESS:
            continue
        words = _text(entry["command"]).split()
        name = words[0].lower() if words else "?"
        operation = shas.get(words[1].lower(), "other script") if name == "evalsha" else None
        if operation is None:
            other[name] += 1
            continue
        evalsha[operation] += 1
        usec[operation] += int(entry["duration"])
    return AuditResult(
        pairs=sum(t.pairs for t in tallies),
        acquires=sum(t.acquires for t in tallies),
        releases=sum(t.releases for t in tallies),
        evalsha=dict(evalsha),
        other=dict(other),
        acquire_usec=usec["acquire"] / max(1, evalsha["acquire"]),
        release_usec=usec["release"] / max(1, evalsha["release"]),
        complete=complete,
    )


# -- one measurement -----------------------------------------------------------------------------


@dataclass
class Sample:
    """The counters of the measured slices of one (strategy, pool size), summed."""

    seconds: float = 0.0
    pairs: int = 0
    acquires: int = 0
    releases: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    calls: Counter[str] = field(default_factory=Counter)
    evalsha_usec: int = 0
    redis_cpu_s: float = 0.0
    client_cpu_s: float = 0.0

    def add(self, seconds: float, tallies: Sequence[Tally], info: dict[str, Any]) -> None:
        """Add one slice: the workers' tallies and ``INFO commandstats`` read right after it."""
        self.seconds += seconds
        for tally in tallies:
            self.pairs += tally.pairs
            self.acquires += tally.acquires
            self.releases += tally.releases
            self.errors.update(tally.errors)
            self.client_cpu_s += tally.cpu_s
        self.calls.update(command_calls(info))
        self.evalsha_usec += int(info.get("cmdstat_evalsha", {}).get("usec", 0))


@dataclass
class Row:
    """One (strategy, pool size) measurement."""

    strategy: str
    size: int
    seconds: float
    pairs: int
    acquires: int
    releases: int
    errors: dict[str, int]
    pairs_per_s: float
    evalsha: int
    other_commands: dict[str, int]
    script_commands: int
    usec_per_evalsha: float
    redis_cpu: float
    client_cpu: float
    audit: AuditResult | None
    #: Filled in once the smallest size of the same strategy is known.
    ratio: float = 1.0
    cost_ratio: float = 1.0

    @property
    def evalsha_per_pair(self) -> float:
        return self.evalsha / max(1, self.pairs)

    @property
    def one_round_trip_each(self) -> bool:
        counted = self.evalsha == self.acquires + self.releases and not self.other_commands
        return counted and not self.errors and (self.audit is None or self.audit.ok)


def make_row(label: str, size: int, sample: Sample, audit: AuditResult | None) -> Row:
    inner = script_command_names()
    evalsha = sample.calls["evalsha"]
    seconds = max(sample.seconds, 1e-9)
    return Row(
        strategy=label,
        size=size,
        seconds=sample.seconds,
        pairs=sample.pairs,
        acquires=sample.acquires,
        releases=sample.releases,
        errors=dict(sample.errors),
        pairs_per_s=sample.pairs / seconds,
        evalsha=evalsha,
        other_commands={
            name: calls
            for name, calls in sample.calls.items()
            if name not in inner | HARNESS_COMMANDS | {"evalsha"}
        },
        script_commands=sum(calls for name, calls in sample.calls.items() if name in inner),
        usec_per_evalsha=sample.evalsha_usec / max(1, evalsha),
        redis_cpu=sample.redis_cpu_s / seconds,
        client_cpu=sample.client_cpu_s / seconds,
        audit=audit,
    )


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
    admin: Redis, workers: Workers, options: Options, strategy: broker.Strategy, tiers: bool
) -> list[Row]:
    """Every pool size of one strategy, in interleaved rounds so drift in the machine's load
    (other processes, CPU frequency) falls on every size alike rather than on the last one.
    With ``tiers``, the pools have priority tiers and unit quotas, and releases report units."""
    run_id = uuid.uuid4().hex[:8]
    label = f"{strategy.value}+tiers" if tiers else strategy.value
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
            if options.audit_pairs > 0:
                prepare = Prepare(name, strategy, 0.0, tiers)
                audits[size] = await audit(
                    admin, workers, prepare, options.audit_pairs, options.clients
                )
    finally:
        for name in names.values():
            await _drop_pool(admin, name)
    return [make_row(label, size, samples[size], audits.get(size)) for size in options.sizes]


def add_ratios(rows: Sequence[Row]) -> None:
    """Each row against the smallest pool size of the same strategy, measured in the same run."""
    for row in rows:
        base = min((r for r in rows if r.strategy == row.strategy), key=lambda r: r.size)
        row.ratio = row.pairs_per_s / base.pairs_per_s
        row.cost_ratio = row.usec_per_evalsha / max(base.usec_per_evalsha, 1e-9)


async def run_all(redis_url: str, options: Options) -> list[Row]:
    admin = Redis.from_url(redis_url, decode_responses=True, client_name=ADMIN_CLIENT_NAME)
    workers = Workers(redis_url, options.processes, options.clients)
    rows: list[Row] = []
    finished = False
    try:
        for strategy in options.strategies:
            rows += await measure_strategy(admin, workers, options, strategy, tiers=False)
            if options.tiers:
                rows += await measure_strategy(admin, workers, options, strategy, tiers=True)
            print(f"  measured {strategy.value}", file=sys.stderr, flush=True)
        finished = True
    finally:
        workers.close(graceful=finished)
        await admin.aclose()
    add_ratios(rows)
    return rows


# -- the report ----------------------------------------------------------------------------------

COLUMNS = (
    ("size", 6),
    ("strategy", 16),
    ("pairs/s", 8),
    ("ratio", 6),
    ("evalsha/pair", 12),
    ("other", 6),
    ("us/evalsha", 10),
    ("cost x", 6),
    ("lua cmds/pair", 13),
    ("audit", 6),
    ("redis cpu", 9),
    ("client cpu", 10),
)


def _cells(row: Row) -> list[str]:
    audit = row.audit
    return [
        str(row.size),
        row.strategy,
        f"{row.pairs_per_s:.0f}",
        f"{row.ratio:.2f}",
        f"{row.evalsha_per_pair:.3f}",
        str(sum(row.other_commands.values())),
        f"{row.usec_per_evalsha:.1f}",
        f"{row.cost_ratio:.2f}",
        f"{row.script_commands / max(1, row.pairs):.1f}",
        "-" if audit is None else ("ok" if audit.ok else "FAIL"),
        f"{row.redis_cpu:.2f}",
        f"{row.client_cpu:.2f}",
    ]


def table(rows: Sequence[Row]) -> str:
    lines = ["  ".join(title.rjust(width) for title, width in COLUMNS)]
    for row in rows:
        cells = _cells(row)
        lines.append("  ".join(c.rjust(w) for c, (_, w) in zip(cells, COLUMNS, strict=True)))
    return "\n".join(lines)


@dataclass
class Verdict:
    throughput_ok: bool
    round_trips_ok: bool
    lines: list[str]


def verdict(rows: Sequence[Row]) -> Verdict:
    largest = [r for r in rows if r.size == max(x.size for x in rows if x.strategy == r.strategy)]
    worst = min(largest, key=lambda r: r.ratio)
    throughput_ok = all(r.ratio >= BAR_RATIO for r in largest)
    round_trips_ok = all(r.one_round_trip_each for r in rows)
    throughput = f"{'PASS' if throughput_ok else 'FAIL'} (lowest ratio {worst.ratio:.2f}, "
    throughput += f"{worst.strategy} at {worst.size})"
    if len({r.size for r in rows}) < 2:
        throughput = "not measured (give at least two --sizes)"
    lines = [
        f"throughput at the largest pool >= {BAR_RATIO} x the smallest, every strategy: "
        + throughput,
        "exactly one round trip per acquire and per release: "
        f"{'PASS' if round_trips_ok else 'FAIL'}",
    ]
    for row in rows:
        lines += [f"  {row.strategy} at {row.size}: {problem}" for problem in _problems(row)]
    return Verdict(throughput_ok, round_trips_ok, lines)


def _problems(row: Row) -> list[str]:
    problems = []
    expected = row.acquires + row.releases
    if row.evalsha != expected:
        problems.append(
            f"{row.evalsha} EVALSHA for {row.acquires} acquires + {row.releases} releases"
        )
    if row.other_commands:
        problems.append(f"other commands in the measured run: {row.other_commands}")
    if row.errors:
        problems.append(f"errors: {row.errors}")
    if row.audit is not None and not row.audit.ok:
        a = row.audit
        problems.append(
            f"audit: EVALSHA by script {a.evalsha} for {a.acquires} acquires + {a.releases} "
            f"releases, other client commands {a.other}"
            + ("" if a.complete else ", SLOWLOG overflowed")
        )
    return problems


def describe(options: Options, redis_url: str | None, redis_version: str) -> str:
    where = "a private redis-server" if redis_url is None else "the given Redis"
    per = f"{options.processes} processes x ~{options.clients // options.processes} tasks"
    slices = f"{options.rounds} interleaved slice{'s' * (options.rounds != 1)}"
    return (
        f"{options.clients} clients ({per}); {options.duration_s:g} s measured per row, in "
        f"{slices}, after {options.warmup_s:g} s warm-up; {where} "
        f"{redis_version}; {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at the "
        f"start; Python {platform.python_version()}"
    )


# -- command line --------------------------------------------------------------------------------


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
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
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


def _write_json(path: Path, header: str, rows: Sequence[Row], result: Verdict) -> None:
    document = {
        "benchmark": "acquire_release",
        "setup": header,
        "bar": {"ratio_at_least": BAR_RATIO, "evalsha_per_pair": EVALSHA_PER_PAIR},
        "pass": result.throughput_ok and result.round_trips_ok,
        "verdict": result.lines,
        "rows": [
            {**asdict(r), "evalsha_per_pair": r.evalsha_per_pair, "ok": r.one_round_trip_each}
            for r in rows
        ],
    }
    path.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")


def main(argv: Sequence[str] | None = None) -> int:
    options, redis_url, redis_server, json_path = parse_args(argv)
    quiet_broker_logs()
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        with contextlib.ExitStack() as stack:
            url = redis_url or stack.enter_context(local_redis(redis_server))
            header = describe(options, redis_url, asyncio.run(_redis_version(url)))
            print(f"running: {header}", file=sys.stderr, flush=True)
            rows = asyncio.run(run_all(url, options))
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
        _write_json(json_path, header, rows, result)
    return 0 if result.throughput_ok and result.round_trips_ok else 1


if __name__ == "__main__":
    sys.exit(main())
