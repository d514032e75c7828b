"""The figures of ``bench.proxy_overhead``: its measured windows, their medians and spreads over
the rounds, the figures taken per round against a baseline (a ratio of requests/s, a difference
of latency), the bars, and the tables."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field

__all__ = [
    "BEFORE",
    "BROKERED",
    "MAX_ADDED_P50_MS",
    "MAX_ADDED_P99_MS",
    "MAX_P50_OVER_PASSTHROUGH_MS",
    "MIN_PASSTHROUGH_RATIO",
    "MIN_REQUESTS_PER_S",
    "PROXY",
    "Row",
    "Spread",
    "Verdict",
    "added",
    "ratio",
    "summary_table",
    "verdicts",
    "windows_table",
]

#: Issue 3's bar.
MAX_ADDED_P50_MS = 1.0
MAX_ADDED_P99_MS = 5.0
MIN_REQUESTS_PER_S = 1500.0
#: Issue 17's bar, against the bare pass-through.
MIN_PASSTHROUGH_RATIO = 0.75
MAX_P50_OVER_PASSTHROUGH_MS = 1.0
#: The replica on the real store: the one the bars judge.
PROXY = "proxy"
#: The replica run from another checkout (``--before``).
BEFORE = "proxy-before"
#: The pass-through with a lease per request: the broker calls and nothing else of a replica.
BROKERED = "passthrough+broker"


@dataclass
class Row:
    """One measured window: a target in one phase, in one round of the repeats."""

    phase: str
    target: str
    repeat: int
    generator: str
    seconds: float
    requests: int
    errors: dict[str, int] = field(default_factory=dict)
    requests_per_s: float = 0.0
    p50_ms: float | None = None
    p99_ms: float | None = None
    #: CPU of the process in front of the upstream (a replica, the pass-through) per request.
    cpu_ms_per_request: float | None = None
    #: That CPU over the window, in cores (1.0: it was the bottleneck).
    cores: float | None = None
    #: CPU of the Redis main thread per request (``INFO cpu``), for the targets that call it.
    redis_cpu_ms_per_request: float | None = None


@dataclass(frozen=True)
class Spread:
    """The median of a figure over the repeats, and its min and max."""

    median: float
    low: float
    high: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread:
        return cls(statistics.median(values), min(values), max(values))

    def text(self, digits: int) -> str:
        if self.low == self.high:
            return f"{self.median:,.{digits}f}"
        return f"{self.median:,.{digits}f} ({self.low:,.{digits}f}-{self.high:,.{digits}f})"


def _pairs(rows: Sequence[Row], phase: str, a: str, b: str) -> list[tuple[Row, Row]]:
    """The windows of targets ``a`` and ``b`` in ``phase``, paired by round."""
    by = {(r.phase, r.target, r.repeat): r for r in rows}
    repeats = sorted({r.repeat for r in rows if r.phase == phase})
    return [(by[phase, a, n], by[phase, b, n]) for n in repeats]


def ratio(rows: Sequence[Row], target: str, baseline: str) -> Spread:
    """Closed-loop requests/s of ``target`` over ``baseline``'s, per round."""
    return Spread.of(
        [a.requests_per_s / b.requests_per_s for a, b in _pairs(rows, "closed", target, baseline)]
    )


def added(rows: Sequence[Row], target: str, baseline: str, quantile: str = "p50_ms") -> Spread:
    """Open-loop latency of ``target`` minus ``baseline``'s at ``quantile``, per round."""
    return Spread.of(
        [
            (getattr(a, quantile) or 0.0) - (getattr(b, quantile) or 0.0)
            for a, b in _pairs(rows, "open", target, baseline)
        ]
    )


def figure(rows: Sequence[Row], phase: str, target: str, name: str) -> Spread | None:
    values = [getattr(r, name) for r in rows if r.phase == phase and r.target == target]
    values = [v for v in values if v is not None]
    return Spread.of(values) if values else None


@dataclass(frozen=True)
class Verdict:
    ok: bool
    text: str

    def line(self) -> str:
        return f"{'PASS' if self.ok else 'FAIL'}  {self.text}"


def verdicts(rows: Sequence[Row]) -> list[Verdict]:
    p50, p99 = added(rows, PROXY, "direct"), added(rows, PROXY, "direct", "p99_ms")
    max_rps = figure(rows, "closed", PROXY, "requests_per_s")
    assert max_rps is not None
    floor = ratio(rows, PROXY, "passthrough")
    over = added(rows, PROXY, "passthrough")
    errors = sum(sum(r.errors.values()) for r in rows)
    return [
        Verdict(
            p50.median <= MAX_ADDED_P50_MS,
            f"added p50 <= {MAX_ADDED_P50_MS:g} ms: {p50.text(2)} ms",
        ),
        Verdict(
            p99.median <= MAX_ADDED_P99_MS,
            f"added p99 <= {MAX_ADDED_P99_MS:g} ms: {p99.text(2)} ms",
        ),
        Verdict(
            max_rps.median >= MIN_REQUESTS_PER_S,
            f">= {MIN_REQUESTS_PER_S:,.0f} requests/s through one replica: {max_rps.text(0)}",
        ),
        Verdict(
            floor.median >= MIN_PASSTHROUGH_RATIO,
            f"max requests/s >= {MIN_PASSTHROUGH_RATIO:g}x the bare pass-through's: "
            f"{floor.text(2)}x",
        ),
        Verdict(
            over.median <= MAX_P50_OVER_PASSTHROUGH_MS,
            f"p50 <= the bare pass-through's + {MAX_P50_OVER_PASSTHROUGH_MS:g} ms: "
            f"+{over.text(2)} ms",
        ),
        Verdict(errors == 0, f"every request answered 200: {errors} did not"),
    ]


def _cell(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def windows_table(rows: Sequence[Row]) -> str:
    """Every measured window, in the order measured."""
    lines = [
        "| phase | round | target | generator | requests | req/s | p50 ms | p99 ms | errors "
        "| cpu ms/req | cores | redis cpu ms/req |",
        "| --- | ---: | --- | --- | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {r.phase} | {r.repeat + 1} | {r.target} | {r.generator} | {r.requests} "
            f"| {r.requests_per_s:,.0f} | {_cell(r.p50_ms, 2)} | {_cell(r.p99_ms, 2)} "
            f"| {', '.join(f'{k}:{v}' for k, v in r.errors.items()) or '-'} "
            f"| {_cell(r.cpu_ms_per_request, 3)} | {_cell(r.cores, 2)} "
            f"| {_cell(r.redis_cpu_ms_per_request, 3)} |"
        )
    return "\n".join(lines)


def summary_table(rows: Sequence[Row]) -> str:
    """Per phase and target: medians over the rounds (min-max), and the figures against the
    direct call and the pass-through, taken per round."""
    lines = [
        "| phase | target | req/s | p50 ms | p99 ms | p50 - direct ms | p50 - passthrough ms "
        "| req/s / passthrough | cpu ms/req | req/cpu-s | redis cpu ms/req |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    seen: list[tuple[str, str]] = []
    for r in rows:
        if (r.phase, r.target) not in seen:
            seen.append((r.phase, r.target))
    for phase, target in seen:
        cells = []
        for name, digits in (("requests_per_s", 0), ("p50_ms", 2), ("p99_ms", 2)):
            value = figure(rows, phase, target, name)
            cells.append(value.text(digits) if value else "-")
        versus = []
        if phase == "open":
            for base in ("direct", "passthrough"):
                versus.append(added(rows, target, base).text(2) if target != base else "-")
            versus.append("-")
        else:
            versus += ["-", "-"]
            versus.append(ratio(rows, target, "passthrough").text(2) if target != "direct" else "-")
        cpu = figure(rows, phase, target, "cpu_ms_per_request")
        per_cpu_s = Spread.of([1000 / v for v in _values(rows, phase, target)]) if cpu else None
        store = figure(rows, phase, target, "redis_cpu_ms_per_request")
        lines.append(
            f"| {phase} | {target} | {' | '.join(cells)} | {' | '.join(versus)} "
            f"| {cpu.text(3) if cpu else '-'} | {per_cpu_s.text(0) if per_cpu_s else '-'} "
            f"| {store.text(3) if store else '-'} |"
        )
    return "\n".join(lines)


def _values(rows: Sequence[Row], phase: str, target: str) -> list[float]:
    return [
        r.cpu_ms_per_request
        for r in rows
        if r.phase == phase and r.target == target and r.cpu_ms_per_request
    ]
