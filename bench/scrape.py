"""A scrape of /metrics during load: does it add to the proxy's latency?

The bar (issue 14): with 10,000 sessions, a scrape during load adds nothing measurable to the
proxy's p99. Measured in one run: windows of open-loop load through one replica, alternately
without and with a scraper that GETs /metrics every ``--scrape-interval`` seconds (far more
often than Prometheus would: a stall, if there is one, shows in every window). ``--repeats``
pairs of windows; the median p99 of each kind, and its spread (max - min) over the repeats.
"Nothing measurable" is the tolerance: the scraped median p99 is at most the quiet one plus the
quiet windows' own spread (what the machine varies by without any scrape), and at least 1 ms.

What runs, all on 127.0.0.1 and stopped at exit: a private ``redis-server``, the simulated
upstream with no latency (``python -m proxy.testing.upstream``) and one replica
(``python -m proxy``) with ``--sessions`` sessions from a sessions file. With
``--metrics-per-session`` the replica labels its metrics by session (the opt-in), so the
rendering the scrapes cost is that of a series per session it used.

The table gives each window's p50, p90 and p99, the scrapes made and how long each took. Read
the tail with care at 10,000 sessions: the replicas' health summary reads every session of the
pool (every 10 s under traffic, whichever replica's turn it is) and stalls that replica's
requests while it does, in scraped and quiet windows alike; a smaller ``--sessions`` shows the
scrape's own effect with less noise.

Run from the repository root with the project installed: ``python -m bench.scrape``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import sys
import threading
import time
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from bench.figures import percentile
from bench.generators import Generators, noop
from bench.processes import Processes, processes, start_redis, start_replica, start_upstream

#: Seconds of each window that are warm-up, not measured.
WARMUP_S = 1.0
#: Requests/s that use every session once before measuring, with the opt-in (round-robin).
WARMUP_RATE = 500.0
#: The least tolerance of the bar: below it p99s of separate windows are noise on any machine.
MIN_TOLERANCE_MS = 1.0


@dataclass
class Window:
    """One window of load: with or without the scraper, its latencies and the scrapes made."""

    scraped: bool
    requests: int
    errors: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    scrapes: int = 0
    scrape_ms: list[float] = field(default_factory=list)
    metrics_bytes: int = 0


class Scraper(threading.Thread):
    """GETs /metrics every ``interval_s`` until stopped; records how long each took."""

    def __init__(self, url: str, interval_s: float) -> None:
        super().__init__(daemon=True)
        self.url, self.interval_s = url, interval_s
        self.halt = threading.Event()
        self.took_ms: list[float] = []
        self.size = 0

    def run(self) -> None:
        while not self.halt.is_set():
            started = time.perf_counter()
            with urllib.request.urlopen(self.url, timeout=30) as response:
                self.size = len(response.read())
            self.took_ms.append(1000 * (time.perf_counter() - started))
            self.halt.wait(self.interval_s)


def start_fleet(scope: Processes, args: argparse.Namespace) -> tuple[str, str]:
    """Redis, the upstream and one replica with ``args.sessions`` sessions; the replica's proxy
    and ops URLs."""
    redis_url = start_redis(scope)
    upstream, upstream_url = start_upstream(scope)
    # A file, not SESSIONS: 10,000 secrets are longer than one environment variable may be.
    sessions = [{"id": f"s{i}", "secret": f"sk-scrape-{i}"} for i in range(args.sessions)]
    sessions_file = scope.workdir / "sessions.json"
    sessions_file.write_text(json.dumps({"sessions": sessions}))
    env = {
        "REDIS_URL": redis_url,
        "UPSTREAM_URL": upstream_url,
        "SESSIONS_FILE": str(sessions_file),
        "LOG_LEVEL": "warning",
        "METRICS_PER_SESSION": str(args.metrics_per_session).lower(),
        "SESSION_SELECTION_STRATEGY": "round-robin",  # every session in turn: all get series
    }
    replica, port, admin = start_replica(scope, env)
    scope.wait_ready([upstream, replica])
    return f"http://127.0.0.1:{port}", f"http://127.0.0.1:{admin}"


def measure(
    gen: Generators, proxy_url: str, ops_url: str, args: argparse.Namespace, *, scraped: bool
) -> Window:
    scraper = Scraper(ops_url + "/metrics", args.scrape_interval) if scraped else None
    if scraper is not None:
        scraper.start()
    try:
        records = gen.open(proxy_url, args.rate, WARMUP_S + args.duration)
    finally:
        if scraper is not None:
            scraper.halt.set()
            scraper.join()
    measured = [r for r in records if r[0] >= WARMUP_S]
    latencies = [latency for _, latency, status in measured if status == "200"]
    window = Window(
        scraped,
        len(measured),
        len(measured) - len(latencies),
        1000 * percentile(latencies, 50),
        1000 * percentile(latencies, 90),
        1000 * percentile(latencies, 99),
    )
    if scraper is not None:
        window.scrapes, window.scrape_ms, window.metrics_bytes = (
            len(scraper.took_ms), scraper.took_ms, scraper.size,
        )  # fmt: skip
    return window


@dataclass(frozen=True)
class Summary:
    quiet_p99_ms: float
    quiet_spread_ms: float
    scraped_p99_ms: float
    scraped_spread_ms: float
    tolerance_ms: float

    @property
    def added_ms(self) -> float:
        return self.scraped_p99_ms - self.quiet_p99_ms

    @property
    def ok(self) -> bool:
        return self.added_ms <= self.tolerance_ms


def summarise(windows: Sequence[Window]) -> Summary:
    quiet = [w.p99_ms for w in windows if not w.scraped]
    scraped = [w.p99_ms for w in windows if w.scraped]
    spread = max(quiet) - min(quiet)
    return Summary(
        statistics.median(quiet),
        spread,
        statistics.median(scraped),
        max(scraped) - min(scraped),
        max(MIN_TOLERANCE_MS, spread),
    )


def table(windows: Sequence[Window]) -> str:
    lines = [
        "| window | scraper | requests | errors | p50 ms | p90 ms | p99 ms | scrapes "
        "| scrape p50 ms | scrape max ms | /metrics bytes |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for n, w in enumerate(windows, 1):
        took = w.scrape_ms
        lines.append(
            f"| {n} | {'on' if w.scraped else 'off'} | {w.requests} | {w.errors} "
            f"| {w.p50_ms:.2f} | {w.p90_ms:.2f} | {w.p99_ms:.2f} | {w.scrapes or '-'} "
            f"| {f'{statistics.median(took):.1f}' if took else '-'} "
            f"| {f'{max(took):.1f}' if took else '-'} | {w.metrics_bytes or '-'} |"
        )
    return "\n".join(lines)


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.scrape", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--sessions", type=int, default=10_000)
    parser.add_argument("--rate", type=float, default=100.0, help="open-loop requests/s")
    parser.add_argument("--duration", type=float, default=8.0, help="measured seconds a window")
    parser.add_argument("--repeats", type=int, default=3, help="pairs of windows (at least 3)")
    parser.add_argument("--scrape-interval", type=float, default=0.25, help="seconds")
    parser.add_argument("--workers", type=int, default=2, help="Python load processes")
    parser.add_argument("--metrics-per-session", action="store_true", help="the opt-in labels")
    parser.add_argument("--keep-logs", type=Path, default=None, help="keep every process's log")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats: at least 1 (3 or more for a result)")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    load_before = os.getloadavg()
    context = multiprocessing.get_context("spawn")
    with (
        ProcessPoolExecutor(args.workers, mp_context=context) as pool,
        processes(args.keep_logs) as scope,
    ):
        for future in [pool.submit(noop) for _ in range(args.workers)]:
            future.result()
        gen = Generators(pool, args.workers, use_wrk=False, wrk_script=Path(os.devnull))
        try:
            proxy_url, ops_url = start_fleet(scope, args)
            # With the opt-in, every session used before measuring, so its series all exist.
            if args.metrics_per_session:
                gen.open(proxy_url, WARMUP_RATE, args.sessions / WARMUP_RATE)
            else:
                gen.open(proxy_url, args.rate, 2.0)
            windows = [
                measure(gen, proxy_url, ops_url, args, scraped=scraped)
                for _ in range(args.repeats)
                for scraped in (False, True)
            ]
        except KeyboardInterrupt:
            print("interrupted; every process stopped", file=sys.stderr)
            return 130
    summary = summarise(windows)
    labels = "by session (METRICS_PER_SESSION)" if args.metrics_per_session else "by pool"
    print(
        f"one replica, {args.sessions} sessions, metrics {labels}, {args.rate:g} req/s open loop, "
        f"a scrape every {args.scrape_interval:g} s in the scraped windows; {os.cpu_count()} "
        f"cpus, load average {load_before[0]:.2f} at the start, {os.getloadavg()[0]:.2f} at the end"
    )
    print(table(windows))
    print()
    for name in ("p50_ms", "p90_ms"):
        quiet = statistics.median(getattr(w, name) for w in windows if not w.scraped)
        scraped = statistics.median(getattr(w, name) for w in windows if w.scraped)
        print(f"median {name[:3]}: {quiet:.2f} ms quiet, {scraped:.2f} ms scraped")
    print(
        f"median p99: {summary.quiet_p99_ms:.2f} ms quiet (spread {summary.quiet_spread_ms:.2f}), "
        f"{summary.scraped_p99_ms:.2f} ms scraped (spread {summary.scraped_spread_ms:.2f}); "
        f"added {summary.added_ms:+.2f} ms"
    )
    print(
        f"{'PASS' if summary.ok else 'FAIL'}  a scrape adds at most {summary.tolerance_ms:.2f} ms "
        f"(the quiet spread, at least {MIN_TOLERANCE_MS:g}) to the median p99: "
        f"{summary.added_ms:+.2f} ms"
    )
    if args.json is not None:
        report = {
            "args": {k: str(v) for k, v in vars(args).items()},
            "windows": [vars(w) for w in windows],
            "summary": vars(summary) | {"added_ms": summary.added_ms, "ok": summary.ok},
        }
        args.json.write_text(json.dumps(report, indent=2))
    return 0 if summary.ok else 1


if __name__ == "__main__":
    sys.exit(main())
