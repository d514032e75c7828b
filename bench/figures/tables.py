"""The figures of fleet runs as Markdown tables: ``table`` for the fleet benchmark's own
scenarios, ``learning_table`` for issue 13's (limits nobody states); and the formats of a figure
that the bars' verdict lines share."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from bench.figures.run import RunFigures

__all__ = [
    "HEADER",
    "LEARNING_HEADER",
    "learning_table",
    "pct_text",
    "row",
    "seconds_text",
    "table",
]


def _ms(seconds: float) -> str:
    return "-" if math.isnan(seconds) else f"{seconds * 1000:.0f}"


def _errors(statuses: Mapping[str, int]) -> str:
    return " ".join(f"{k}:{v}" for k, v in statuses.items()) or "-"


HEADER = (
    "| scenario | mode | goodput/s | vs quota | vs attainable | wasted/success | upstream 429 "
    "| attempts/req | client errors | p50 ms | p95 ms | p99 ms | Jain | cpu ms/req |\n"
    "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: "
    "| ---: |"
)


def row(f: RunFigures) -> str:
    lat = f.latency_ok_s
    return (
        f"| {f.scenario} | {f.mode} | {f.goodput_per_s:.1f} | {f.goodput_vs_quota:.1%} "
        f"| {f.goodput_vs_attainable:.1%} "
        f"| {f.wasted_per_success:.3f} | {f.upstream_429_share:.1%} | {f.attempts_per_request:.2f} "
        f"| {_errors(f.client_statuses)} | {_ms(lat['p50'])} | {_ms(lat['p95'])} "
        f"| {_ms(lat['p99'])} | {f.jain:.3f} | {f.proxy_cpu_ms_per_request:.2f} |"
    )


def table(results: Sequence[RunFigures]) -> str:
    return "\n".join([HEADER, *(row(f) for f in results)])


def pct_text(value: float) -> str:
    """A share as a percentage; ``-`` for NaN (no such figure in this run)."""
    return "-" if math.isnan(value) else f"{value:.1%}"


def _follows(f: RunFigures) -> str:
    return " ".join(f"{name} {seconds_text(s)}" for name, s in f.follow_s.items())


LEARNING_HEADER = (
    "| scenario | mode | vs quota | first window | wasted/success | upstream 429 | follows "
    "| client errors | p50 ms | p99 ms |\n"
    "| --- | --- | ---: | ---: | ---: | ---: | --- | --- | ---: | ---: |"
)


def learning_table(results: Sequence[RunFigures]) -> str:
    """Issue 13's figures: the quota served over the run and in its first window, the waste,
    and how fast the fleet followed a limit that changed."""
    rows = [
        f"| {f.scenario} | {f.mode} | {f.goodput_vs_quota:.1%} | {pct_text(f.served_first_window)} "
        f"| {f.wasted_per_success:.3f} | {f.upstream_429_share:.1%} | {_follows(f) or '-'} "
        f"| {_errors(f.client_statuses)} | {_ms(f.latency_ok_s['p50'])} "
        f"| {_ms(f.latency_ok_s['p99'])} |"
        for f in results
    ]
    return "\n".join([LEARNING_HEADER, *rows])


def seconds_text(value: float) -> str:
    """Seconds as a verdict or a table shows them; ``never`` for NaN (not within the run)."""
    return "never" if math.isnan(value) else f"{value:g} s"
