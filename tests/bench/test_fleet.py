"""The fleet benchmark's machinery in a tiny configuration, so it cannot rot: every process starts,
load flows through each mode, the replica kill happens, the figures and the table come out.
Behaviour only; the numbers it measures are the benchmark's business, not the test's."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_fleet_runner_end_to_end(tmp_path: Path, redis_server: str) -> None:
    """Two scenarios x three modes, two replica processes each, two seconds of load per run."""
    out = tmp_path / "out"
    argv = [sys.executable, "-m", "bench.fleet", "--scenarios", "known,kill"]
    argv += ["--modes", "shared-round-robin,naive,local", "--replicas", "2", "--duration", "2"]
    argv += ["--sessions", "3", "--rpm", "120", "--redis-url", redis_server, "--no-plots"]
    argv += ["--out", str(out)]
    done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=150)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    data = json.loads((out / "results.json").read_text())
    runs = {(r["scenario"], r["mode"]): r for r in data["runs"]}
    modes = ("shared-round-robin", "naive", "local")
    assert set(runs) == {(s, m) for s in ("known", "kill") for m in modes}
    for run in runs.values():
        assert run["requests"] > 0
        assert run["upstream_attempts"] > 0
        assert 0 < run["ok"] <= run["upstream_ok"]
        assert set(run["upstream_by_session"]) == {"s1", "s2", "s3"}
    # At 1.5x the quota the broker, told each rpm, never lets a request reach the upstream to be
    # refused; the naive baseline learns nothing and retries into 429s.
    assert runs[("known", "shared-round-robin")]["upstream_429"] == 0
    assert runs[("known", "naive")]["upstream_429"] > 0
    # After replica 0 is killed the client's next request to it is refused and goes elsewhere.
    assert all(runs[("kill", m)]["failovers"] >= 1 for m in modes)
    assert "| known | naive |" in (out / "table.md").read_text()
    assert "known: shared-round-robin upstream 429s < 1% of attempts" in done.stdout
