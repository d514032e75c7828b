"""PNG plots of a fleet run (matplotlib, from the ``bench`` extra): one figure per scenario with
every mode side by side, and one summary across scenarios."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt
from matplotlib.axes import Axes

from bench.figures import RunFigures

DPI = 72


def _bars(ax: Axes, labels: Sequence[str], values: Sequence[float], title: str) -> None:
    colors = [f"C{i}" for i in range(len(labels))]
    ax.bar(range(len(labels)), values, color=colors)
    ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right", fontsize=8)
    ax.set_title(title, fontsize=9)
    for index, value in enumerate(values):
        if not math.isnan(value) and not math.isinf(value):
            ax.annotate(f"{value:.2f}", (index, value), ha="center", va="bottom", fontsize=7)


def plot_scenario(runs: Sequence[RunFigures], path: Path) -> Path:
    modes = [r.mode for r in runs]
    fig, axes = plt.subplots(2, 3, figsize=(13, 7.5))
    fig.suptitle(
        f"scenario '{runs[0].scenario}': {runs[0].replicas} replicas, {runs[0].duration_s:g} s, "
        f"offered {runs[0].offered_per_s:.1f}/s against a quota of {runs[0].quota_per_s:.1f}/s",
        fontsize=10,
    )
    goodput = axes[0][0]
    _bars(goodput, modes, [r.goodput_vs_quota for r in runs], "goodput / total quota")
    goodput.axhline(1.0, color="grey", linewidth=0.8, linestyle="--")
    _bars(
        axes[0][1],
        modes,
        [r.wasted_per_success for r in runs],
        "wasted upstream attempts per success (at the upstream)",
    )
    _errors(axes[0][2], runs)
    _latency(axes[1][0], runs)
    _share(axes[1][1], runs)
    _timeline(axes[1][2], runs)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def _errors(ax: Axes, runs: Sequence[RunFigures]) -> None:
    statuses = sorted({s for r in runs for s in r.client_statuses})
    bottom = [0.0] * len(runs)
    for index, status in enumerate(statuses):
        values = [r.client_statuses.get(status, 0) / max(1, r.requests) for r in runs]
        ax.bar(range(len(runs)), values, bottom=bottom, label=status, color=f"C{index}")
        bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    ax.set_xticks(range(len(runs)), [r.mode for r in runs], rotation=30, ha="right", fontsize=8)
    ax.set_title("client-visible errors, share of requests, by status", fontsize=9)
    if statuses:
        ax.legend(fontsize=7)


def _latency(ax: Axes, runs: Sequence[RunFigures]) -> None:
    width = 0.25
    for offset, q in enumerate(("p50", "p95", "p99")):
        values = [1000 * r.latency_ok_s[q] for r in runs]
        ax.bar([i + (offset - 1) * width for i in range(len(runs))], values, width, label=q)
    ax.set_xticks(range(len(runs)), [r.mode for r in runs], rotation=30, ha="right", fontsize=8)
    ax.set_title("client latency of successful requests (ms)", fontsize=9)
    ax.legend(fontsize=7)


def _share(ax: Axes, runs: Sequence[RunFigures]) -> None:
    sessions = list(runs[0].quota_share)
    width = 0.8 / (len(runs) + 1)
    positions = range(len(sessions))
    ax.bar(
        [p - 0.4 + width / 2 for p in positions],
        [runs[0].quota_share[s] for s in sessions],
        width,
        color="lightgrey",
        label="quota share",
    )
    for index, run in enumerate(runs):
        ax.bar(
            [p - 0.4 + width * (index + 1.5) for p in positions],
            [run.share.get(s, 0.0) for s in sessions],
            width,
            label=f"{run.mode} (Jain {run.jain:.2f})",
            color=f"C{index}",
        )
    ax.set_xticks(list(positions), sessions, fontsize=8)
    ax.set_title("share of successes per session", fontsize=9)
    ax.legend(fontsize=6)


def _timeline(ax: Axes, runs: Sequence[RunFigures]) -> None:
    """Successes per second as the upstream answered them (what "follows a changed limit" is
    judged on), or by the client's arrival time for a run without the upstream's timeline."""
    upstream = all(run.upstream_timeline for run in runs)
    for index, run in enumerate(runs):
        ok = (
            [
                sum(n for s, n in second.items() if s.startswith("2"))
                for second in run.upstream_timeline
            ]
            if upstream
            else run.timeline_ok
        )
        ax.plot(range(len(ok)), ok, label=run.mode, color=f"C{index}")
    ax.axhline(
        runs[0].quota_per_s, color="grey", linewidth=0.8, linestyle="--", label="quota at start"
    )
    ax.set_xlabel(f"second of the run (by {'answer' if upstream else 'arrival'})", fontsize=8)
    ax.set_title("successes per second", fontsize=9)
    ax.legend(fontsize=7)


def plot_summary(results: Sequence[RunFigures], path: Path) -> Path:
    scenarios = list(dict.fromkeys(r.scenario for r in results))
    modes = list(dict.fromkeys(r.mode for r in results))
    found = {(r.scenario, r.mode): r for r in results}
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.5))
    width = 0.8 / len(modes)
    for index, mode in enumerate(modes):
        xs = [i - 0.4 + width * (index + 0.5) for i in range(len(scenarios))]
        runs = [found.get((s, mode)) for s in scenarios]
        axes[0].bar(xs, [r.goodput_vs_quota if r else 0 for r in runs], width, label=mode)
        axes[1].bar(xs, [r.wasted_per_success if r else 0 for r in runs], width, label=mode)
    axes[0].axhline(1.0, color="grey", linewidth=0.8, linestyle="--")
    axes[0].set_title("goodput / total quota", fontsize=10)
    axes[1].set_title("wasted upstream attempts per success (log scale)", fontsize=10)
    axes[1].set_yscale("symlog", linthresh=0.01)
    for ax in axes:
        ax.set_xticks(range(len(scenarios)), scenarios, fontsize=8)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def plot_all(results: Sequence[RunFigures], out: Path) -> list[Path]:
    matplotlib.use("Agg")  # files only, no display
    written = []
    for scenario in dict.fromkeys(r.scenario for r in results):
        runs = [r for r in results if r.scenario == scenario]
        written.append(plot_scenario(runs, out / f"fleet-{scenario}.png"))
    written.append(plot_summary(results, out / "fleet-summary.png"))
    return written
