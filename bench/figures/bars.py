"""The bars of the issues, checked against the figures of fleet runs: ``bars`` for the fleet
benchmark's own scenarios, ``learning_bars`` for issue 13's (limits nobody states). Each bar is a
``Verdict`` whose line says PASS or FAIL, the figure, and beside it the baselines' of the same
run."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from bench.figures.run import RunFigures
from bench.figures.tables import pct_text, seconds_text
from bench.scenarios import Scenario

__all__ = ["Verdict", "bars", "learning_bars"]

#: The issue's bars, at 1.5x quota with 3 replicas.
BAR_WASTE_VS_NAIVE = 0.30  # shared wastes at least 70% fewer attempts per success than naive
BAR_GOODPUT_KNOWN = 0.95
BAR_UPSTREAM_429_KNOWN = 0.01
BAR_GOODPUT_UNKNOWN = 0.90

#: Issue 13's bars (3 sessions at 120 rpm, 2 replicas, 2x the quota).
BAR_HEADERLESS_FIRST = 0.85  # of the quota served in the first window (60 s)
BAR_HEADERLESS_TOTAL = 0.92  # of the quota over the whole run (180 s)
BAR_HEADERLESS_WASTE = 0.30  # wasted upstream attempts per success
BAR_HEADERS_GOODPUT = 0.97
BAR_FOLLOW_S = 10.0  # seconds until the fleet follows a limit that halves, or comes back
BAR_FOLLOW_429 = 0.10  # 429s over the upstream attempts of that run


@dataclass(frozen=True)
class Verdict:
    bar: str
    passed: bool
    detail: str

    def line(self) -> str:
        return f"{'PASS' if self.passed else 'FAIL'}  {self.bar}: {self.detail}"


def bars(results: Sequence[RunFigures]) -> list[Verdict]:
    """The issue's bars, for every shared mode, where the needed runs exist."""
    found = {(f.scenario, f.mode): f for f in results}
    shared = sorted({f.mode for f in results if f.mode.startswith("shared-")})
    verdicts: list[Verdict] = []
    for scenario in ("known", "unknown"):
        naive, local = found.get((scenario, "naive")), found.get((scenario, "local"))
        for mode in shared:
            ours = found.get((scenario, mode))
            if ours is None:
                continue
            if naive is not None and naive.wasted_per_success > 0:
                cut = 1 - ours.wasted_per_success / naive.wasted_per_success
                verdicts.append(
                    Verdict(
                        f"{scenario}: {mode} wastes >= 70% fewer attempts/success than naive",
                        ours.wasted_per_success <= BAR_WASTE_VS_NAIVE * naive.wasted_per_success,
                        f"{ours.wasted_per_success:.3f} vs {naive.wasted_per_success:.3f} "
                        f"({cut:.0%} fewer)",
                    )
                )
            if local is not None:
                verdicts.append(
                    Verdict(
                        f"{scenario}: {mode} wastes fewer attempts/success than local",
                        ours.wasted_per_success < local.wasted_per_success,
                        f"{ours.wasted_per_success:.3f} vs {local.wasted_per_success:.3f}",
                    )
                )
            if scenario == "known":
                verdicts.append(
                    Verdict(
                        f"known: {mode} goodput >= 95% of quota",
                        ours.goodput_vs_quota >= BAR_GOODPUT_KNOWN,
                        f"{ours.goodput_vs_quota:.1%}",
                    )
                )
                verdicts.append(
                    Verdict(
                        f"known: {mode} upstream 429s < 1% of attempts",
                        ours.upstream_429_share < BAR_UPSTREAM_429_KNOWN,
                        f"{ours.upstream_429_share:.2%} ({ours.upstream_429} of "
                        f"{ours.upstream_attempts})",
                    )
                )
            else:
                verdicts.append(
                    Verdict(
                        f"unknown: {mode} goodput >= 90% of quota",
                        ours.goodput_vs_quota >= BAR_GOODPUT_UNKNOWN,
                        f"{ours.goodput_vs_quota:.1%}",
                    )
                )
    return verdicts


def _beside(runs: Sequence[RunFigures], figure: Callable[[RunFigures], str]) -> str:
    """The same figure for the baselines (and LiteLLM) of the same run, for the verdict line."""
    others = [f"{r.mode} {figure(r)}" for r in runs if not r.mode.startswith("shared-")]
    return f" ({', '.join(others)})" if others else ""


def learning_bars(results: Sequence[RunFigures], chosen: Sequence[Scenario]) -> list[Verdict]:
    """Issue 13's bars, for every shared mode of every scenario that has one; each line shows
    the baselines' figure of the same run beside ours."""
    verdicts: list[Verdict] = []
    for scenario in chosen:
        runs = [f for f in results if f.scenario == scenario.name]
        for ours in (f for f in runs if f.mode.startswith("shared-")):
            if scenario.bar is not None:
                verdicts += _learning_bar(scenario.bar, scenario, ours, runs, results)
    return verdicts


def _learning_bar(
    bar: str,
    scenario: Scenario,
    ours: RunFigures,
    runs: Sequence[RunFigures],
    results: Sequence[RunFigures],
) -> list[Verdict]:
    name, mode = scenario.name, ours.mode
    waste = _beside(runs, lambda r: f"{r.wasted_per_success:.3f}")
    goodput = _beside(runs, lambda r: f"{r.goodput_vs_quota:.1%}")
    share_429 = _beside(runs, lambda r: f"{r.upstream_429_share:.1%}")
    if bar == "headerless":
        first = _beside(runs, lambda r: pct_text(r.served_first_window))
        return [
            Verdict(
                f"{name}: {mode} serves >= 85% of the quota in the first {ours.first_window_s:g} s",
                ours.served_first_window >= BAR_HEADERLESS_FIRST,
                f"{pct_text(ours.served_first_window)}{first}",
            ),
            Verdict(
                f"{name}: {mode} serves >= 92% of the quota over {ours.duration_s:g} s",
                ours.goodput_vs_quota >= BAR_HEADERLESS_TOTAL,
                f"{ours.goodput_vs_quota:.1%}{goodput}",
            ),
            Verdict(
                f"{name}: {mode} wastes <= 0.3 upstream attempts per success",
                ours.wasted_per_success <= BAR_HEADERLESS_WASTE,
                f"{ours.wasted_per_success:.3f}{waste}",
            ),
        ]
    if bar == "headers":
        return [
            Verdict(
                f"{name}: {mode} serves >= 97% of the quota",
                ours.goodput_vs_quota >= BAR_HEADERS_GOODPUT,
                f"{ours.goodput_vs_quota:.1%}{goodput}",
            )
        ]
    if bar == "known":
        return [
            Verdict(
                f"{name}: {mode} gets no upstream 429",
                ours.upstream_429 == 0,
                f"{ours.upstream_429} of {ours.upstream_attempts}{share_429}",
            ),
            Verdict(
                f"{name}: {mode} serves >= 95% of the quota",
                ours.goodput_vs_quota >= BAR_GOODPUT_KNOWN,
                f"{ours.goodput_vs_quota:.1%}{goodput}",
            ),
        ]
    if bar == "follow":
        followed = [
            Verdict(
                f"{name}: {mode} follows the limit {change} within {BAR_FOLLOW_S:g} s",
                not math.isnan(seconds) and seconds <= BAR_FOLLOW_S,
                seconds_text(seconds) + _beside(runs, _follow_figure(change)),
            )
            for change, seconds in ours.follow_s.items()
        ]
        return [
            *followed,
            Verdict(
                f"{name}: {mode} upstream 429s <= 10% of attempts",
                ours.upstream_429_share <= BAR_FOLLOW_429,
                f"{ours.upstream_429_share:.1%}{share_429}",
            ),
        ]
    if bar == "flaky":
        naive = next((r for r in runs if r.mode == "naive"), None)
        if naive is None:
            return [Verdict(f"{name}: {mode} against naive", False, "no naive run in this run")]
        return [
            Verdict(
                f"{name}: {mode} goodput >= naive's",
                ours.goodput_vs_quota >= naive.goodput_vs_quota,
                f"{ours.goodput_vs_quota:.1%}{goodput}",
            ),
            Verdict(
                f"{name}: {mode} wastes <= 0.3x naive's attempts per success",
                ours.wasted_per_success <= BAR_WASTE_VS_NAIVE * naive.wasted_per_success,
                f"{ours.wasted_per_success:.3f}{waste}",
            ),
        ]
    twin = next((r for r in results if r.scenario == scenario.twin and r.mode == ours.mode), None)
    label = f"{name}: {mode} serves at least what {scenario.twin} does in its first window"
    if twin is None:
        return [Verdict(label, False, f"no {scenario.twin} run with {mode} in this run")]
    return [
        Verdict(
            label,
            ours.served_first_window >= twin.served_first_window,
            f"{pct_text(ours.served_first_window)} vs {pct_text(twin.served_first_window)}",
        )
    ]


def _follow_figure(change: str) -> Callable[[RunFigures], str]:
    return lambda run: seconds_text(run.follow_s.get(change, math.nan))
