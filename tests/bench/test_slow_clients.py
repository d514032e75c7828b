"""The slow-clients benchmark's machinery in a tiny configuration, so it cannot rot: Redis, the
upstream and a replica start, stalled clients are answered 408 or 503, the figures come out."""

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
def test_slow_clients_end_to_end(tmp_path: Path) -> None:
    """Twenty stalled clients over half a second against two slots: two get 408, none holds a
    lease past BODY_TIMEOUT."""
    out = tmp_path / "slow.json"
    argv = [sys.executable, "-m", "bench.slow_clients", "--clients", "20", "--sessions", "2"]
    argv += ["--max-concurrency", "1", "--arrival", "0.5", "--body-timeout", "1.5"]
    argv += ["--repeats", "1", "--json", str(out)]
    done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode in (0, 1), done.stdout[-2000:] + done.stderr[-3000:]
    assert "| 1 | 2 |" in done.stdout
    (repeat,) = json.loads(out.read_text())["repeats"]
    assert repeat["statuses"] == {"408": 2, "503": 18}
    assert repeat["peak_live_leased"] <= 2
