"""The scrape benchmark's machinery in a tiny configuration, so it cannot rot: a replica starts
with a sessions file, load flows with and without the scraper, the scrapes happen and the table
and the JSON come out. Behaviour only: whether the bar passes is the benchmark's business."""

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
def test_scrape_end_to_end(tmp_path: Path) -> None:
    """One pair of one-second windows over 50 sessions labelled by session: every request
    answered, and only the scraped window scraped."""
    out = tmp_path / "scrape.json"
    argv = [sys.executable, "-m", "bench.scrape", "--sessions", "50", "--rate", "40"]
    argv += ["--duration", "1", "--repeats", "1", "--metrics-per-session", "--json", str(out)]
    done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode in (0, 1), done.stdout[-2000:] + done.stderr[-3000:]
    assert "median p99" in done.stdout
    data = json.loads(out.read_text())
    quiet, scraped = data["windows"]
    assert (quiet["scraped"], scraped["scraped"]) == (False, True)
    for window in (quiet, scraped):
        assert window["requests"] > 0
        assert window["errors"] == 0
    assert quiet["scrapes"] == 0
    assert scraped["scrapes"] > 0
    assert scraped["metrics_bytes"] > 0
