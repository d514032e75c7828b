"""docs/testing.md's example runs as written."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

DOC = Path(__file__).parents[2] / "docs" / "testing.md"


def test_the_deployment_example_runs(redis_executable: str, tmp_path: Path) -> None:
    """The first Python block of docs/testing.md (Redis, the simulated upstream, a replica)
    runs to its end, its own assertion included."""
    example = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.DOTALL)[0]
    script = tmp_path / "try_deployment.py"
    script.write_text(example)
    done = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "the clients got" in done.stdout
