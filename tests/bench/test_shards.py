"""bench/shards.py: the busiest node decides, the bar is judged on the CPU reading, and a short
run on a real three-node cluster measures every layout."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.shards import Run, main, report


def runs(one_cpu: float, many_cpu: float) -> list[Run]:
    """Two repeats of the three layouts; 1,000 requests each."""
    made = []
    for _ in range(2):
        made += [
            Run("1 shard", 1000, 1.0, [150_000.0, 0.0, 0.0], [one_cpu * 1000, 500.0, 500.0]),
            Run("3 shards", 1000, 1.0, [60_000.0] * 3, [many_cpu * 1000, 10_000.0, 10_000.0]),
            Run("3 pools (control)", 1000, 1.0, [50_000.0] * 3, [many_cpu * 1000] * 3),
        ]
    return made


def test_the_busiest_node_decides(capsys: pytest.CaptureFixture[str]) -> None:
    """A run's figure is its busiest node's, per request; the bar is <= 0.45x on CPU."""
    assert report(runs(one_cpu=100.0, many_cpu=40.0), 3)
    assert "bar <= 0.45x: PASS" in capsys.readouterr().out
    assert not report(runs(one_cpu=100.0, many_cpu=50.0), 3)
    out = capsys.readouterr().out
    assert "CPU: 3 shards / 1 shard = 0.50x" in out
    assert "bar <= 0.45x: FAIL" in out


def test_a_short_run_measures_every_layout(
    redis_executable: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """On a private cluster: every layout runs, each node's time is read, the table printed."""
    result = tmp_path / "runs.json"
    main(["--sessions", "12", "--requests", "200", "--repeats", "1", "--json", str(result)])
    out = capsys.readouterr().out
    for layout in ("1 shard", "3 shards", "3 pools (control)"):
        assert f"| {layout} |" in out
    assert result.read_text().count('"layout"') == 3
