"""The worker processes of the acquire+release benchmark: each runs its share of the clients as
asyncio tasks on its own store client and Pool, driven in lock step by the coordinator's
messages (prepare a pool, run until a shared instant, audit a fixed number of pairs, quit)."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import multiprocessing
import signal
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

import structlog

import broker

#: Units each release reports in the ``+tiers`` rows.
BENCH_UNITS = 100


def quiet_broker_logs() -> None:
    """The broker logs each session's first state at debug; thousands of lines here."""
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))


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


def baseline_worker(path: str, conn: Connection, redis_url: str, clients: int) -> None:
    """A worker process on the broker copied to ``path`` (``baseline.py``): the broker and this
    module are imported again from there before the worker starts."""
    for name in list(sys.modules):
        if name in ("broker", __name__) or name.startswith("broker."):
            del sys.modules[name]
    sys.path.insert(0, path)
    importlib.import_module(__name__).worker_main(conn, redis_url, clients)


class Workers:
    """The worker processes, driven in lock step: send one command to all, collect all tallies."""

    def __init__(
        self, redis_url: str, processes: int, clients: int, *, baseline: Path | None = None
    ) -> None:
        """``baseline``: the workers run the broker copied there (``baseline.py``)."""
        context = multiprocessing.get_context("spawn")
        self._conns: list[Connection] = []
        self._procs: list[BaseProcess] = []
        for index in range(processes):
            share = clients // processes + (index < clients % processes)
            parent_end, child_end = context.Pipe()
            if baseline is None:
                proc = context.Process(
                    target=worker_main, args=(child_end, redis_url, share), daemon=True
                )
            else:
                args = (str(baseline), child_end, redis_url, share)
                proc = context.Process(target=baseline_worker, args=args, daemon=True)
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
