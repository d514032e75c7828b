"""Proxy overhead: one replica in front of an upstream that answers at once, against a bare
aiohttp pass-through in front of the same upstream and against calling it directly, in the same
run, interleaved.

The bars:

* issue 3: added latency (replica - direct) p50 <= 1 ms and p99 <= 5 ms at a fixed offered load
  below saturation, with a real Redis, and >= 1,500 requests/s per replica process;
* issue 17: the replica's max requests/s >= 0.75x the bare pass-through's (``bench.passthrough``:
  an aiohttp server and a pooled ``aiohttp.ClientSession``, no broker: the floor of this stack),
  and its p50 under the open loop <= the pass-through's + 1 ms.

What runs, all on 127.0.0.1 and stopped at exit (also on Ctrl-C; they die with the benchmark):
a private ``redis-server``, the simulated upstream with no latency and no limits
(``python -m proxy.testing.upstream``), the pass-through (``python -m bench.passthrough``), the
same pass-through taking a lease per request from the same Redis (``passthrough+broker``: the
broker calls alone, so the replica's cost splits into theirs and the rest), one replica
(``python -m proxy``, env vars only, ``--sessions`` sessions, every other setting at its default
but ``LOG_LEVEL=warning``), with ``--before CHECKOUT`` the same replica run from another checkout
(``proxy-before``: before and after a change, in one run) and, with ``--embedded``, a replica on
the embedded store (no ``REDIS_URL``).

Two phases; in each, every target is measured ``--repeats`` times, the targets taking turns (the
order rotating), so a change in the machine's load lands on all of them alike:

* **open loop** (added latency): ``--rate`` requests/s on a fixed schedule, spread over
  ``--workers`` processes (``bench.load.run_load``: latency counts from the scheduled arrival,
  so a stall in the client shows instead of hiding). One second of warm-up, then
  ``--open-duration`` seconds measured.
* **closed loop** (max requests/s): ``--connections`` concurrent connections send requests back
  to back for ``--closed-duration`` seconds after a one-second warm-up. With ``wrk`` on PATH it
  generates the load (C, one thread: the lightest generator here); without it, ``--workers``
  Python processes with aiohttp do (``--generator`` forces either). The table says which.

Each figure is the median over the repeats, with its spread (min-max); each ratio is taken per
repeat (the windows of one round, side by side), then its median. The CPU time (from ``/proc``)
per request of the process in front of the upstream (a replica, the pass-through) is reported for
both phases; on a small machine the generator, the upstream, Redis and that process share the
cores, so ``req/cpu-s`` (requests per second of its CPU) estimates what it does with a core of
its own.

Run from the repository root with the project installed: ``python -m bench.proxy_overhead``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import re
import shutil
import sys
import tempfile
import urllib.request
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import redis

from bench.figures import percentile
from bench.generators import PATH, WRK_SCRIPT, Generators, noop
from bench.overhead_figures import (
    BEFORE,
    BROKERED,
    PROXY,
    Row,
    summary_table,
    verdicts,
    windows_table,
)
from bench.processes import (
    Child,
    Processes,
    env_for_children,
    free_port,
    processes,
    python,
    start_redis,
    start_replica,
    start_upstream,
)

#: Seconds of load before each measured window: connections opened, scripts loaded, caches warm.
WARMUP_S = 1.0


@dataclass
class Target:
    """What a window measures: a URL, the process in front of the upstream (None: the upstream
    itself), and the Redis it calls (None: none)."""

    name: str
    url: str
    server: Child | None
    redis: redis.Redis | None = None

    def cpu_s(self) -> tuple[float, float]:
        """CPU seconds so far of the server process and of Redis's main thread (``INFO cpu``;
        the pass-through without a broker and the embedded store's replica call none)."""
        server_s = self.server.cpu_s() if self.server is not None else 0.0
        if self.redis is None:
            return server_s, 0.0
        info = self.redis.info("cpu")
        main_s = info["used_cpu_sys_main_thread"] + info["used_cpu_user_main_thread"]
        return server_s, float(main_s)


def _per_request(row: Row, target: Target, before: tuple[float, float], requests: int) -> None:
    """The CPU the target's server and its Redis spent on the window, per request sent."""
    if target.server is None:
        return
    server_s, redis_s = (after - was for after, was in zip(target.cpu_s(), before, strict=True))
    row.cpu_ms_per_request = 1000 * server_s / max(1, requests)
    if target.redis is not None:
        row.redis_cpu_ms_per_request = 1000 * redis_s / max(1, requests)
    if row.phase == "closed":
        row.cores = server_s / row.seconds


def measure_closed(gen: Generators, target: Target, repeat: int, seconds: float, conns: int) -> Row:
    url = target.url + PATH
    gen.closed(url, conns, WARMUP_S)
    before = target.cpu_s()
    statuses, ran_s = gen.closed(url, conns, seconds)
    ok = statuses.pop("200", 0)
    requests = ok + sum(statuses.values())
    row = Row("closed", target.name, repeat, gen.closed_name, ran_s, requests, dict(statuses))
    row.requests_per_s = ok / ran_s
    _per_request(row, target, before, requests)
    return row


def measure_open(gen: Generators, target: Target, repeat: int, seconds: float, rate: float) -> Row:
    before = target.cpu_s()
    records = gen.open(target.url, rate, WARMUP_S + seconds)
    measured = [r for r in records if r[0] >= WARMUP_S]
    errors = Counter(status for _, _, status in measured if status != "200")
    latencies = [latency for _, latency, status in measured if status == "200"]
    name = f"python x{gen.workers}"
    row = Row("open", target.name, repeat, name, seconds, len(measured), dict(errors))
    row.requests_per_s = len(latencies) / seconds
    row.p50_ms = 1000 * percentile(latencies, 50)
    row.p99_ms = 1000 * percentile(latencies, 99)
    # The warm-up's requests are in the CPU time as well: divide by every request sent.
    _per_request(row, target, before, len(records))
    return row


# --- the run ---------------------------------------------------------------------------------


def start_targets(scope: Processes, args: argparse.Namespace) -> tuple[list[Target], str]:
    """Redis, the upstream, the pass-through and the replica(s); the targets, and the replica's
    ops URL."""
    redis_url = start_redis(scope)
    upstream, upstream_url = start_upstream(scope)
    store = redis.Redis.from_url(redis_url)
    passthroughs = []
    for name, extra in (
        ("passthrough", []),
        (BROKERED, ["--redis-url", redis_url, "--sessions", str(args.sessions)]),
    ):
        port = free_port()
        argv = [
            python(),
            "-m",
            "bench.passthrough",
            "--port",
            str(port),
            "--upstream",
            upstream_url,
        ]
        child = scope.start(
            name,
            [*argv, *extra],
            env=env_for_children(),
            ready_url=f"http://127.0.0.1:{port}/-/ready",
        )
        calls = store if extra else None
        passthroughs.append(Target(name, f"http://127.0.0.1:{port}", child, calls))
    env = {
        "UPSTREAM_URL": upstream_url,
        "SESSIONS": ",".join(f"sk-overhead-{i}" for i in range(args.sessions)),
        "LOG_LEVEL": "warning",
    }
    replica, replica_port, admin = start_replica(scope, {**env, "REDIS_URL": redis_url})
    targets = [
        Target("direct", upstream_url, None),
        *passthroughs,
        Target(PROXY, f"http://127.0.0.1:{replica_port}", replica, store),
    ]
    if args.before is not None:
        # Its code first on the path: the same interpreter and packages, another checkout; a
        # pool of its own, should the two lay out their keys differently.
        code = {"PYTHONPATH": str(args.before.resolve()), "POOL": "before"}
        before, before_port, _ = start_replica(scope, {**env, "REDIS_URL": redis_url, **code})
        targets.append(Target(BEFORE, f"http://127.0.0.1:{before_port}", before, store))
    if args.embedded:
        embedded, embedded_port, _ = start_replica(scope, env)
        targets.append(Target("proxy-embedded", f"http://127.0.0.1:{embedded_port}", embedded))
    scope.wait_ready([upstream, *(t.server for t in targets if t.server)])
    return targets, f"http://127.0.0.1:{admin}"


def outcomes(ops_url: str) -> dict[str, int]:
    """The replica's upstream attempts by outcome, summed over sessions (from /metrics)."""
    with urllib.request.urlopen(f"{ops_url}/metrics", timeout=5) as response:
        text = response.read().decode()
    counts: Counter[str] = Counter()
    for match in re.finditer(r'_session_requests_total\{outcome="(\w+)"[^}]*\} ([\d.e+]+)', text):
        counts[match.group(1)] += round(float(match.group(2)))
    return dict(counts)


def rounds(
    targets: Sequence[Target], repeats: int, measure: Callable[[Target, int], Row]
) -> list[Row]:
    """Every target measured ``repeats`` times, taking turns; each round starts one later."""
    rows = []
    for repeat in range(repeats):
        shift = repeat % len(targets)
        for target in [*targets[shift:], *targets[:shift]]:
            rows.append(measure(target, repeat))
    return rows


def run(
    args: argparse.Namespace, scope: Processes, gen: Generators
) -> tuple[list[Row], dict[str, int]]:
    targets, ops_url = start_targets(scope, args)
    # Open loop first: wrk cuts its connections with requests in flight when it stops, and the
    # replica counts some of those as network failures of their sessions (see docs/benchmarks.md),
    # which may open circuit breakers; nothing is measured with the open loop after that.
    rows = rounds(
        targets,
        args.repeats,
        lambda t, r: measure_open(gen, t, r, args.open_duration, args.rate),
    )
    rows += rounds(
        targets,
        args.repeats,
        lambda t, r: measure_closed(gen, t, r, args.closed_duration, args.connections),
    )
    for target in targets:
        if target.redis is not None:
            target.redis.close()
        if target.server is not None and not target.server.alive():
            raise RuntimeError(f"{target.name} died: {target.server.log_tail()}")
    return rows, outcomes(ops_url)


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.proxy_overhead", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--rate", type=float, default=40.0, help="open-loop requests/s")
    parser.add_argument("--open-duration", type=float, default=8.0, help="measured seconds")
    parser.add_argument("--closed-duration", type=float, default=4.0, help="measured seconds")
    parser.add_argument("--connections", type=int, default=32, help="closed-loop connections")
    parser.add_argument("--repeats", type=int, default=3, help="rounds of every target")
    parser.add_argument("--workers", type=int, default=2, help="Python load processes")
    parser.add_argument("--sessions", type=int, default=10)
    parser.add_argument(
        "--embedded",
        action="store_true",
        help="also measure a replica on the embedded store (no REDIS_URL)",
    )
    parser.add_argument(
        "--before",
        type=Path,
        default=None,
        metavar="CHECKOUT",
        help="also measure a replica run from this checkout of the repository (say, of the "
        "main branch), against the same Redis: before and after in one run",
    )
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
    if args.repeats < 1:
        parser.error("--repeats: at least 1")
    if args.before is not None and not (args.before / "proxy" / "__main__.py").is_file():
        parser.error(f"--before: {args.before} is not a checkout of this repository")
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
        f"one replica, {args.sessions} sessions, real Redis; {args.repeats} rounds; "
        f"{os.cpu_count()} cpus, load average {load_before[0]:.2f} at the start, "
        f"{load_after[0]:.2f} at the end"
    )
    print(windows_table(rows))
    print()
    print(summary_table(rows))
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
