"""The baseline of ``--baseline REF``: the broker of another commit, measured in the same run.

``git archive`` copies that commit's ``broker/`` and ``lua/`` (as ``broker/lua``, where the
wheel puts it) to a temporary folder. Its worker processes run the same client loop
(``workers.py``) on that broker: a spawned child imports this checkout's ``broker`` while it
starts (the parent's main module), so ``workers.baseline_worker`` drops it and imports the copy.
Pools are still synced by this checkout's broker; the pool's keys are the same in both.
"""

from __future__ import annotations

import contextlib
import io
import subprocess
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def checkout(ref: str) -> Iterator[Path]:
    """``ref``'s broker package with its scripts, in a temporary folder, for the block."""
    root = Path(__file__).resolve().parents[2]
    try:
        archive = subprocess.run(
            ["git", "archive", "--format=tar", ref, "broker", "lua"],
            cwd=root,
            check=True,
            capture_output=True,
        ).stdout
    except subprocess.CalledProcessError as exc:
        raise RuntimeError(f"--baseline {ref}: {exc.stderr.decode().strip()}") from exc
    with tempfile.TemporaryDirectory(prefix="bench-baseline-") as folder:
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            tar.extractall(folder, filter="data")
        Path(folder, "lua").rename(Path(folder, "broker", "lua"))
        yield Path(folder)
