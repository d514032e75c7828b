"""The acquire+release benchmark's report: the table, the verdict against the bars, the setup
line and the JSON document."""

from __future__ import annotations

import json
import os
import platform
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from bench.acquire_release.counters import Row
from bench.acquire_release.measure import Options

#: The bar: throughput at the largest size over that at the smallest, per strategy.
BAR_RATIO = 0.5
#: Round trips one acquire+release pair may make: one FCALL each.
FCALL_PER_PAIR = 2
#: Redis time (INFO commandstats) per script call and per pair (a proxied request's two calls).
BAR_USEC_PER_CALL = 30.0
BAR_USEC_PER_PAIR = 70.0

COLUMNS = (
    ("size", 6),
    ("strategy", 16),
    ("pairs/s", 8),
    ("ratio", 6),
    ("calls/pair", 10),
    ("other", 6),
    ("us/call", 7),
    ("cost x", 6),
    ("us/pair", 7),
    ("cmd us/pair", 11),
    ("cpu us/pair", 11),
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
        f"{row.calls_per_pair:.3f}",
        str(sum(row.other_commands.values())),
        f"{row.usec_per_call:.1f}",
        f"{row.cost_ratio:.2f}",
        f"{row.usec_per_pair:.1f}",
        f"{row.command_usec_per_pair:.1f}",
        f"{row.cpu_usec_per_pair:.1f}",
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
    redis_time_ok: bool
    lines: list[str]

    @property
    def ok(self) -> bool:
        return self.throughput_ok and self.round_trips_ok and self.redis_time_ok


def verdict(every_row: Sequence[Row]) -> Verdict:
    """The bars, judged on this checkout's rows (a baseline's are there to compare)."""
    rows = [r for r in every_row if not r.code]
    largest = [r for r in rows if r.size == max(x.size for x in rows if x.strategy == r.strategy)]
    worst = min(largest, key=lambda r: r.ratio)
    throughput_ok = all(r.ratio >= BAR_RATIO for r in largest)
    round_trips_ok = all(r.one_round_trip_each for r in rows)
    costliest = max(rows, key=lambda r: r.usec_per_call)
    redis_time_ok = all(
        r.usec_per_call <= BAR_USEC_PER_CALL and r.usec_per_pair <= BAR_USEC_PER_PAIR for r in rows
    )
    throughput = f"{'PASS' if throughput_ok else 'FAIL'} (lowest ratio {worst.ratio:.2f}, "
    throughput += f"{worst.strategy} at {worst.size})"
    if len({r.size for r in rows}) < 2:
        throughput = "not measured (give at least two --sizes)"
    lines = [
        f"throughput at the largest pool >= {BAR_RATIO} x the smallest, every strategy: "
        + throughput,
        "exactly one round trip per acquire and per release: "
        f"{'PASS' if round_trips_ok else 'FAIL'}",
        f"Redis time <= {BAR_USEC_PER_CALL:g} us per script call and <= {BAR_USEC_PER_PAIR:g} us "
        f"per pair (commandstats), every row: {'PASS' if redis_time_ok else 'FAIL'} (highest "
        f"{costliest.usec_per_call:.1f} us per call, {costliest.usec_per_pair:.1f} us per pair, "
        f"{costliest.strategy} at {costliest.size}; the CPU figure beside it: "
        f"{costliest.cpu_usec_per_pair:.1f} us per pair)",
    ]
    for row in rows:
        lines += [f"  {row.strategy} at {row.size}: {problem}" for problem in _problems(row)]
    return Verdict(throughput_ok, round_trips_ok, redis_time_ok, lines)


def _problems(row: Row) -> list[str]:
    problems = []
    expected = row.acquires + row.releases
    if row.script_calls != expected:
        problems.append(
            f"{row.script_calls} script calls for {row.acquires} acquires + {row.releases} releases"
        )
    if row.other_commands:
        problems.append(f"other commands in the measured run: {row.other_commands}")
    if row.errors:
        problems.append(f"errors: {row.errors}")
    if row.audit is not None and not row.audit.ok:
        a = row.audit
        problems.append(
            f"audit: FCALL by script {a.fcall} for {a.acquires} acquires + {a.releases} "
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


def write_json(path: Path, header: str, rows: Sequence[Row], result: Verdict) -> None:
    document = {
        "benchmark": "acquire_release",
        "setup": header,
        "bar": {
            "ratio_at_least": BAR_RATIO,
            "fcall_per_pair": FCALL_PER_PAIR,
            "usec_per_call_at_most": BAR_USEC_PER_CALL,
            "usec_per_pair_at_most": BAR_USEC_PER_PAIR,
        },
        "pass": result.ok,
        "verdict": result.lines,
        "rows": [
            {**asdict(r), "calls_per_pair": r.calls_per_pair, "ok": r.one_round_trip_each}
            for r in rows
        ],
    }
    path.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
