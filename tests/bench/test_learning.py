"""Issue 13's benchmark harness: the quota its scenarios allow, how "the fleet follows a changed
limit" is read from the upstream's timeline, the bars' verdicts, and the suite end to end in a
tiny configuration. Behaviour only; the numbers a real run measures are the benchmark's."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from bench.figures import FOLLOW_WINDOW_S, RunFigures, compute, follow_times, learning_bars
from bench.load import Record
from bench.scenarios import SessionSpec, by_name, learning_scenarios

REPO = Path(__file__).resolve().parents[2]


def test_bucket_allows_its_rate_as_scheduled() -> None:
    """A bucket allows its full burst at the start, then its rate, halved while the schedule
    says so."""
    spec = SessionSpec("s1", 120, burst=2, schedule=((60.0, 0.5), (120.0, 1.0)))
    assert spec.allowed(0, 60) == 2 + 120
    assert spec.allowed(60, 120) == 60
    assert spec.allowed(0, 180) == 2 + 120 + 60 + 120
    assert spec.allowed(50, 70) == 10 * 2 + 10 * 1


def test_window_allows_each_window_begun() -> None:
    """A fixed window allows its whole count for every window that starts in the span, however
    little of it the span holds."""
    spec = SessionSpec("s1", 120, shape="window", window_s=60.0)
    assert spec.allowed(0, 60) == 120
    assert spec.allowed(0, 61) == 240
    assert spec.allowed(30, 60) == 0
    assert spec.allowed(0, 180) == 360


def test_learning_suite_has_a_bar_per_scenario() -> None:
    """Every scenario of the suite carries its bar at the issue's parameters: 3 sessions at
    120 rpm, 2 replicas, twice the quota; --quick scales every time in it."""
    full = {s.name: s for s in learning_scenarios()}
    assert {s.bar for s in full.values()} == {
        "headerless",
        "headers",
        "known",
        "follow",
        "flaky",
        "queue",
    }
    for scenario in full.values():
        assert len(scenario.sessions) == 3
        assert scenario.replicas == 2
        assert scenario.load.multiplier == 2.0
    assert full["learn-bare-bucket"].duration_s == 180
    assert full["learn-bare-bucket"].headerless_429
    assert not full["learn-bare-bucket"].rpm_known
    assert full["learn-halving"].changes() == (60.0, 120.0)
    assert full["learn-bare-queue"].shared_env == {"QUEUE_TIMEOUT": "5"}
    quick = {s.name: s for s in learning_scenarios(0.1)}
    assert quick["learn-halving"].changes() == (6.0, 12.0)
    assert quick["learn-bare-window"].sessions[0].window_s == 6.0


def timeline_of(per_second: list[tuple[int, int]]) -> list[dict[str, int]]:
    """An upstream timeline from (successes, 429s) per second."""
    return [{"200": ok, "429": refused} for ok, refused in per_second]


def test_follow_times_read_the_timeline() -> None:
    """After the limit halves, the fleet follows from the first second that starts a window
    below the new limit with few 429s; after it is restored, from the first that reaches it
    again; a fleet that keeps overshooting never follows."""
    halving = by_name(["learn-halving"], learning_scenarios(0.2))[0]  # 6/s; 3/s from 12 to 24 s
    seconds = [(6, 0)] * 12 + [(3, 9)] * 2 + [(3, 0)] * 10 + [(1, 0)] * 3 + [(6, 0)] * 9
    assert follow_times(halving, timeline_of(seconds), 36.0) == {"down@12s": 2.0, "up@24s": 3.0}
    overshooting = [(6, 6)] * 12 + [(3, 9)] * 12 + [(6, 6)] * 12
    follows = follow_times(halving, timeline_of(overshooting), 36.0)
    assert list(follows) == ["down@12s", "up@24s"]
    assert all(math.isnan(seconds) for seconds in follows.values())
    assert FOLLOW_WINDOW_S == 5  # the phases above are longer than one window


def test_follow_times_is_empty_without_a_change() -> None:
    """A scenario whose limits never change has nothing to follow."""
    bucket = by_name(["learn-bare-bucket"], learning_scenarios())[0]
    assert follow_times(bucket, timeline_of([(6, 0)] * 10), 10.0) == {}


def figures(
    scenario_name: str, mode: str, ok_by_second: list[int], **changes: object
) -> RunFigures:
    """The figures of a run in which the requests of ``ok_by_second`` succeed (one second each,
    answered at once), as the fleet benchmark computes them."""
    scenario = by_name([scenario_name], learning_scenarios(0.1))[0]
    records = [
        Record(second + 0.1, 0.05, 200) for second, n in enumerate(ok_by_second) for _ in range(n)
    ]
    upstream = {s.secret: {"statuses": {"200": sum(ok_by_second) // 3}} for s in scenario.sessions}
    run = compute(
        scenario,
        mode,
        replicas=2,
        duration_s=float(len(ok_by_second)),
        records=records,
        upstream=upstream,
        proxy_cpu_s=0.0,
    )
    return replace(run, **changes)  # type: ignore[arg-type]


def test_headerless_bars_judge_ours_and_show_the_baselines() -> None:
    """The header-less bar checks the first window, the whole run and the waste of each shared
    mode, and prints naive's figure of the same run beside ours."""
    ours = figures("learn-bare-bucket", "shared-health", [6] * 18, wasted_per_success=0.1)
    naive = figures("learn-bare-bucket", "naive", [6] * 18, wasted_per_success=4.0)
    assert ours.first_window_s == 6.0
    assert ours.served_first_window == pytest.approx(36 / 42)  # 6 s at 6/s, buckets of 2 each
    scenario = by_name(["learn-bare-bucket"], learning_scenarios(0.1))
    verdicts = learning_bars([ours, naive], scenario)
    assert [v.passed for v in verdicts] == [True, True, True]
    assert "(naive 4.000)" in verdicts[2].line()
    starved = replace(ours, served_first_window=0.5, wasted_per_success=0.5)
    assert [v.passed for v in learning_bars([starved, naive], scenario)] == [False, True, False]


def test_flaky_and_queue_bars_compare_within_the_run() -> None:
    """The flaky bar compares with naive's run, the queue bar with its twin's first window; a
    missing comparison is a FAIL that says so, not a pass."""
    chosen = by_name(["learn-flaky", "learn-bare-queue"], learning_scenarios(0.1))
    ours = figures("learn-flaky", "shared-health", [6] * 6, wasted_per_success=0.1)
    naive = figures("learn-flaky", "naive", [5] * 6, wasted_per_success=1.0)
    queue = figures("learn-bare-queue", "shared-health", [6] * 6)
    verdicts = learning_bars([ours, naive, queue], chosen)
    assert [v.passed for v in verdicts] == [True, True, False]
    assert "no learn-bare-bucket run with shared-health" in verdicts[2].detail
    twin = figures("learn-bare-bucket", "shared-health", [3] * 18)
    assert learning_bars([queue, twin], chosen[1:])[0].passed


@pytest.mark.slow
def test_learning_suite_end_to_end(tmp_path: Path, redis_server: str) -> None:
    """The suite at a fiftieth of its length: the halving and queue scenarios run, the upstream's
    timeline comes back, every bar prints a verdict line."""
    out = tmp_path / "out"
    argv = [sys.executable, "-m", "bench.fleet", "--suite", "learning", "--scale", "0.02"]
    argv += ["--scenarios", "learn-bare-bucket,learn-halving,learn-bare-queue"]
    argv += ["--modes", "shared-round-robin,naive", "--redis-url", redis_server, "--no-plots"]
    argv += ["--out", str(out)]
    done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=110)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    data = json.loads((out / "results.json").read_text())
    runs = {(r["scenario"], r["mode"]): r for r in data["runs"]}
    assert set(runs) == {
        ("learn-bare-bucket", "shared-round-robin"),
        ("learn-bare-bucket", "naive"),
        ("learn-halving", "shared-round-robin"),
        ("learn-halving", "naive"),
        ("learn-bare-queue", "shared-round-robin"),  # this project's setting: ours only
    }
    for run in runs.values():
        assert run["replicas"] == 2
        assert (
            sum(sum(second.values()) for second in run["upstream_timeline"])
            == run["upstream_attempts"]
        )
    assert set(runs[("learn-halving", "naive")]["follow_s"]) == {"down@1.2s", "up@2.4s"}
    verdicts = [v["bar"] for v in data["bars"]]
    assert any("follows the limit down@1.2s" in bar for bar in verdicts)
    assert any("serves at least what learn-bare-bucket does" in bar for bar in verdicts)
    assert "| learn-halving | naive |" in (out / "table.md").read_text()
