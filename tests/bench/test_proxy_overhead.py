"""The proxy overhead benchmark's machinery in a tiny configuration, so it cannot rot: Redis, the
upstream, the pass-throughs and a replica start, load flows to each in both phases and in two
rounds, the tables and the JSON come out. Behaviour only: whether the bar passes is the
benchmark's business."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
# The fixture applies the suite's rule for a missing redis-server (skip; fail with CI=true).
@pytest.mark.usefixtures("redis_server")
def test_proxy_overhead_end_to_end(tmp_path: Path) -> None:
    """Half a second per window, the Python generator (wrk may be missing), every request 200."""
    out = tmp_path / "overhead.json"
    argv = [sys.executable, "-m", "bench.proxy_overhead", "--generator", "python"]
    argv += ["--rate", "50", "--open-duration", "0.5", "--closed-duration", "0.5"]
    argv += ["--connections", "4", "--repeats", "2", "--json", str(out)]
    done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode in (0, 1), done.stdout[-2000:] + done.stderr[-3000:]
    assert "| open | proxy |" in done.stdout
    data = json.loads(out.read_text())
    rows = {(r["phase"], r["target"], r["repeat"]): r for r in data["rows"]}
    targets = ("direct", "passthrough", "passthrough+broker", "proxy")
    assert set(rows) == {(p, t, n) for p in ("open", "closed") for t in targets for n in (0, 1)}
    for row in rows.values():
        assert row["requests"] > 0
        assert row["errors"] == {}
    assert rows[("open", "proxy", 0)]["p99_ms"] >= rows[("open", "proxy", 0)]["p50_ms"] > 0
    for target in targets[1:]:
        assert rows[("closed", target, 1)]["cpu_ms_per_request"] > 0
    assert "| closed | proxy |" in done.stdout  # the summary's row
    assert data["replica_attempts_by_outcome"]["success"] > 0
    assert len(data["verdicts"]) == 6
