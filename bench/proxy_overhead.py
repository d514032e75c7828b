"""Proxy overhead: one replica in front of an upstream that answers at once, against calling that
upstream directly, in the same run.

The bar (issue 3): added latency p50 <= 1 ms and p99 <= 5 ms at a fixed offered load below
saturation, with a real Redis, and >= 1,500 requests/s per replica process.

What runs, all on 127.0.0.1 and stopped at exit (also on Ctrl-C; they die with the benchmark):
a private ``redis-server``, the simulated upstream with no latency and no limits
(``python -m proxy.testing.upstream``), and one replica (``python -m proxy``, env vars only,
``--sessions`` sessions, every other setting at its default but ``LOG_LEVEL=warning``).

Two phases, each measured directly against the upstream, then through the replica:

* **open loop** (added latency): ``--rate`` requests/s on a fixed schedule, spread over
  ``--workers`` processes (``bench.load.run_load``: latency counts from the scheduled arrival,
  so a stall in the client shows instead of hiding). One second of warm-up, then
  ``--open-duration`` seconds measured. Added latency = through the replica - direct, per
  percentile.
* **closed loop** (max requests/s): ``--connections`` concurrent connections send requests back
  to back for ``--closed-duration`` seconds after a one-second warm-up. With ``wrk`` on PATH it
  generates the load (C, one thread: the lightest generator here); without it, ``--workers``
  Python processes with aiohttp do (``--generator`` forces either). The table says which.

Every request is ``POST /v1/chat/completions`` with a small JSON body. The replica's CPU time
(from ``/proc``) per request is reported for both phases; on a small machine the generator, the
upstream, Redis and the replica share the cores, so the closed-loop figure is a floor for what
one replica does with a core of its own, and ``req/cpu-s`` (requests per second of the replica's
CPU) estimates the ceiling.

Run from the repository root with the project installed: ``python -m bench.proxy_overhead``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import aiohttp

from bench.figures import percentile
from bench.load import BODY, run_load
from bench.processes import Child, Processes, processes, start_redis, start_replica, start_upstream

#: The bar, from the issue.
MAX_ADDED_P50_MS = 1.0
MAX_ADDED_P99_MS = 5.0
MIN_REQUESTS_PER_S = 1500.0
#: Seconds of load before each measured window: connections opened, scripts loaded, caches warm.
WARMUP_S = 1.0
#: Seconds the workers get to start before a synchronised start.
START_DELAY_S = 0.5
PATH = "/v1/chat/completions"
#: The upstream wants a credential; the replica replaces whatever the client sends.
HEADERS = {"Authorization": "Bearer direct-client"}
WRK_SCRIPT = f"""wrk.method = "POST"
wrk.body = '{json.dumps(BODY)}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "{HEADERS["Authorization"]}"
"""


@dataclass
class Row:
    """One measured window: a target (``direct`` or ``proxy``) in one phase."""

    phase: str
    target: str
    generator: str
    seconds: float
    requests: int
    errors: dict[str, int] = field(default_factory=dict)
    requests_per_s: float = 0.0
    p50_ms: float | None = None
    p99_ms: float | None = None
    replica_cpu_ms_per_request: float | None = None
    replica_cores: float | None = None


# --- load generators (each in its own process) ---------------------------------------------


async def _closed(url: str, connections: int, start_at: float, seconds: float) -> Counter[str]:
    """Back-to-back requests on ``connections`` connections from ``start_at`` (wall clock) for
    ``seconds``; counts by status. Requests of the warm-up are the caller's to discard."""
    statuses: Counter[str] = Counter()
    connector = aiohttp.TCPConnector(limit=connections)
    async with aiohttp.ClientSession(connector=connector) as http:
        await asyncio.sleep(max(0.0, start_at - time.time()))
        deadline = time.monotonic() + seconds

        async def loop() -> None:
            while time.monotonic() < deadline:
                try:
                    async with http.post(url, json=BODY, headers=HEADERS) as response:
                        await response.read()
                        statuses[str(response.status)] += 1
                except aiohttp.ClientError as exc:
                    statuses[type(exc).__name__] += 1

        await asyncio.gather(*(loop() for _ in range(connections)))
    return statuses


def closed_worker(url: str, connections: int, start_at: float, seconds: float) -> Counter[str]:
    return asyncio.run(_closed(url, connections, start_at, seconds))


def open_worker(
    base_url: str, arrivals: list[float], start_at: float
) -> list[tuple[float, float, str]]:
    """Requests at ``arrivals`` (s after ``start_at``, wall clock): (due, latency, status)."""
    time.sleep(max(0.0, start_at - time.time()))
    records, _ = asyncio.run(run_load([base_url], arrivals, headers=HEADERS, drain_s=10.0))
    return [(r.due_s, r.latency_s, str(r.status)) for r in records]


def noop() -> None:
    """Started once per worker before measuring, so no window pays for a process start."""


# --- phases ----------------------------------------------------------------------------------


@dataclass
class Generators:
    """Where the load comes from: ``wrk`` (closed loop only) and a pool of Python workers."""

    pool: ProcessPoolExecutor
    workers: int
    use_wrk: bool
    wrk_script: Path

    @property
    def closed_name(self) -> str:
        return "wrk -t1" if self.use_wrk else f"python x{self.workers}"

    def closed(self, url: str, connections: int, seconds: float) -> tuple[Counter[str], float]:
        """Statuses of ``seconds`` of closed-loop load, and the seconds it actually ran."""
        if self.use_wrk:
            return self._wrk(url, connections, seconds)
        per = [
            connections // self.workers + (i < connections % self.workers)
            for i in range(self.workers)
        ]
        start_at = time.time() + START_DELAY_S
        futures = [self.pool.submit(closed_worker, url, n, start_at, seconds) for n in per if n]
        statuses: Counter[str] = Counter()
        for future in futures:
            statuses.update(future.result())
        return statuses, seconds

    def _wrk(self, url: str, connections: int, seconds: float) -> tuple[Counter[str], float]:
        argv = ["wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s", "-s", str(self.wrk_script)]
        out = subprocess.run([*argv, url], capture_output=True, text=True, check=True).stdout
        done = re.search(r"(\d+) requests in ([\d.]+)(m?s)", out)
        if done is None:
            raise RuntimeError(f"unexpected wrk output: {out}")
        ran_s = float(done.group(2)) / (1000 if done.group(3) == "ms" else 1)
        bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
        socket_errors = re.search(r"Socket errors: (.*)", out)
        statuses: Counter[str] = Counter()
        statuses["non-2xx"] = int(bad.group(1)) if bad else 0
        statuses["200"] = int(done.group(1)) - statuses["non-2xx"]
        if socket_errors:
            statuses["socket"] = sum(int(n) for n in re.findall(r"\d+", socket_errors.group(1)))
        return +statuses, ran_s

    def open(self, base_url: str, rate: float, seconds: float) -> list[tuple[float, float, str]]:
        """Open loop at ``rate``, each worker a share of a fixed, evenly spaced schedule."""
        count = round(rate * seconds)
        schedule = [i / rate for i in range(count)]
        start_at = time.time() + START_DELAY_S
        futures = [
            self.pool.submit(open_worker, base_url, schedule[w :: self.workers], start_at)
            for w in range(self.workers)
        ]
        return [record for future in futures for record in future.result()]


def measure_closed(
    gen: Generators, replica: Child, target: str, url: str, args: argparse.Namespace
) -> Row:
    gen.closed(url, args.connections, WARMUP_S)
    cpu_before = replica.cpu_s()
    statuses, ran_s = gen.closed(url, args.connections, args.closed_duration)
    cpu_s = replica.cpu_s() - cpu_before
    ok = statuses.pop("200", 0)
    row = Row("closed", target, gen.closed_name, ran_s, ok + sum(statuses.values()), dict(statuses))
    row.requests_per_s = ok / ran_s
    if target == "proxy":
        row.replica_cpu_ms_per_request = 1000 * cpu_s / max(1, row.requests)
        row.replica_cores = cpu_s / ran_s
    return row


def measure_open(
    gen: Generators, replica: Child, target: str, base_url: str, args: argparse.Namespace
) -> Row:
    seconds = WARMUP_S + args.open_duration
    cpu_before = replica.cpu_s()
    records = gen.open(base_url, args.rate, seconds)
    cpu_s = replica.cpu_s() - cpu_before
    measured = [r for r in records if r[0] >= WARMUP_S]
    errors = Counter(status for _, _, status in measured if status != "200")
    latencies = [latency for _, latency, status in measured if status == "200"]
    name = f"python x{gen.workers}"
    row = Row("open", target, name, args.open_duration, len(measured), dict(errors))
    row.requests_per_s = len(latencies) / args.open_duration
    row.p50_ms = 1000 * percentile(latencies, 50)
    row.p99_ms = 1000 * percentile(latencies, 99)
    if target == "proxy":
        # The warm-up's requests are in the CPU time as well: divide by every request sent.
        row.replica_cpu_ms_per_request = 1000 * cpu_s / max(1, len(records))
    return row


# --- the run ---------------------------------------------------------------------------------


def start_targets(scope: Processes, sessions: int) -> tuple[str, str, str, Child]:
    """Redis, the upstream and one replica; returns the URLs of the upstream, the replica and
    its ops port, and the replica."""
    redis_url = start_redis(scope)
    upstream, upstream_url = start_upstream(scope)
    env = {
        "REDIS_URL": redis_url,
        "UPSTREAM_URL": upstream_url,
        "SESSIONS": ",".join(f"sk-overhead-{i}" for i in range(sessions)),
        "LOG_LEVEL": "warning",
    }
    replica, port, admin = start_replica(scope, env)
    scope.wait_ready([upstream, replica])
    return upstream_url, f"http://127.0.0.1:{port}", f"http://127.0.0.1:{admin}", replica


def outcomes(ops_url: str) -> dict[str, int]:
    """The replica's upstream attempts by outcome, summed over sessions (from /metrics)."""
    with urllib.request.urlopen(f"{ops_url}/metrics", timeout=5) as response:
        text = response.read().decode()
    counts: Counter[str] = Counter()
    for match in re.finditer(r'_session_requests_total\{outcome="(\w+)"[^}]*\} ([\d.e+]+)', text):
        counts[match.group(1)] += round(float(match.group(2)))
    return dict(counts)


def run(
    args: argparse.Namespace, scope: Processes, gen: Generators
) -> tuple[list[Row], dict[str, int]]:
    upstream_url, proxy_url, ops_url, replica = start_targets(scope, args.sessions)
    targets = {"direct": upstream_url, "proxy": proxy_url}
    # Open loop first: wrk cuts its connections with requests in flight when it stops, and the
    # replica counts some of those as network failures of their sessions (see docs/benchmarks.md),
    # which may open circuit breakers; nothing is measured after the closed loop.
    rows = [measure_open(gen, replica, target, url, args) for target, url in targets.items()]
    rows += [
        measure_closed(gen, replica, target, url + PATH, args) for target, url in targets.items()
    ]
    if not replica.alive():
        raise RuntimeError(f"the replica died: {replica.log_tail()}")
    return rows, outcomes(ops_url)


@dataclass(frozen=True)
class Verdict:
    ok: bool
    text: str

    def line(self) -> str:
        return f"{'PASS' if self.ok else 'FAIL'}  {self.text}"


def verdicts(rows: Sequence[Row]) -> list[Verdict]:
    by = {(r.phase, r.target): r for r in rows}
    direct, proxy = by["open", "direct"], by["open", "proxy"]
    added_p50 = (proxy.p50_ms or 0) - (direct.p50_ms or 0)
    added_p99 = (proxy.p99_ms or 0) - (direct.p99_ms or 0)
    max_rps = by["closed", "proxy"].requests_per_s
    errors = sum(sum(r.errors.values()) for r in rows)
    return [
        Verdict(
            added_p50 <= MAX_ADDED_P50_MS,
            f"added p50 <= {MAX_ADDED_P50_MS:g} ms: {added_p50:.2f} ms",
        ),
        Verdict(
            added_p99 <= MAX_ADDED_P99_MS,
            f"added p99 <= {MAX_ADDED_P99_MS:g} ms: {added_p99:.2f} ms",
        ),
        Verdict(
            max_rps >= MIN_REQUESTS_PER_S,
            f">= {MIN_REQUESTS_PER_S:,.0f} requests/s through one replica: {max_rps:,.0f}",
        ),
        Verdict(errors == 0, f"every request answered 200: {errors} did not"),
    ]


def _cell(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def table(rows: Sequence[Row]) -> str:
    direct = {r.phase: r for r in rows if r.target == "direct"}
    lines = [
        "| phase | target | generator | requests | req/s | p50 ms | p99 ms | added p50 ms "
        "| added p99 ms | errors | replica cpu ms/req | replica cores | req/cpu-s |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: |",
    ]
    for r in rows:
        base = direct[r.phase]
        added = r.target != "direct" and r.p50_ms is not None
        cpu = r.replica_cpu_ms_per_request
        lines.append(
            f"| {r.phase} | {r.target} | {r.generator} | {r.requests} | {r.requests_per_s:,.0f} "
            f"| {_cell(r.p50_ms, 2)} | {_cell(r.p99_ms, 2)} "
            f"| {_cell((r.p50_ms or 0) - (base.p50_ms or 0) if added else None, 2)} "
            f"| {_cell((r.p99_ms or 0) - (base.p99_ms or 0) if added else None, 2)} "
            f"| {', '.join(f'{k}:{v}' for k, v in r.errors.items()) or '-'} "
            f"| {_cell(cpu, 3)} | {_cell(r.replica_cores, 2)} "
            f"| {_cell(1000 / cpu if cpu else None, 0)} |"
        )
    return "\n".join(lines)


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.proxy_overhead", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--rate", type=float, default=300.0, help="open-loop requests/s")
    parser.add_argument("--open-duration", type=float, default=10.0, help="measured seconds")
    parser.add_argument("--closed-duration", type=float, default=5.0, help="measured seconds")
    parser.add_argument("--connections", type=int, default=32, help="closed-loop connections")
    parser.add_argument("--workers", type=int, default=2, help="Python load processes")
    parser.add_argument("--sessions", type=int, default=10)
    parser.add_argument(
        "--generator",
        choices=("auto", "wrk", "python"),
        default="auto",
        help="closed-loop load: wrk if on PATH (auto), or Python workers",
    )
    parser.add_argument(
        "--keep-logs", type=Path, default=None, help="keep every process's log here"
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)
    if args.generator == "wrk" and shutil.which("wrk") is None:
        parser.error("--generator wrk: wrk is not on PATH (apt-get install wrk)")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    use_wrk = args.generator == "wrk" or (
        args.generator == "auto" and shutil.which("wrk") is not None
    )
    load_before = os.getloadavg()
    context = multiprocessing.get_context("spawn")
    with (
        tempfile.TemporaryDirectory(prefix="bench-overhead-") as tmp,
        ProcessPoolExecutor(args.workers, mp_context=context) as pool,
        processes(args.keep_logs) as scope,
    ):
        for future in [pool.submit(noop) for _ in range(args.workers)]:
            future.result()
        script = Path(tmp) / "post.lua"
        script.write_text(WRK_SCRIPT)
        try:
            rows, attempts = run(args, scope, Generators(pool, args.workers, use_wrk, script))
        except KeyboardInterrupt:
            print("interrupted; every process stopped", file=sys.stderr)
            return 130
    load_after = os.getloadavg()
    print(
        f"one replica, {args.sessions} sessions, real Redis; {os.cpu_count()} cpus, load average "
        f"{load_before[0]:.2f} at the start, {load_after[0]:.2f} at the end"
    )
    print(table(rows))
    print(
        "replica's upstream attempts by outcome:",
        ", ".join(f"{k} {v}" for k, v in attempts.items()),
    )
    results = verdicts(rows)
    print()
    for verdict in results:
        print(verdict.line())
    if args.json is not None:
        report = {
            "args": {k: str(v) for k, v in vars(args).items()},
            "machine": {
                "cpus": os.cpu_count(),
                "python": platform.python_version(),
                "load_before": load_before,
                "load_after": load_after,
            },
            "rows": [asdict(r) for r in rows],
            "replica_attempts_by_outcome": attempts,
            "verdicts": [asdict(v) for v in results],
        }
        args.json.write_text(json.dumps(report, indent=2))
    return 0 if all(v.ok for v in results) else 1


if __name__ == "__main__":
    sys.exit(main())
