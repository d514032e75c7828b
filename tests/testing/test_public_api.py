"""The public surface of the shipped testing package."""

from __future__ import annotations

import subprocess
import sys

from proxy import testing


def test_all_is_pinned() -> None:
    """``proxy.testing.__all__`` is exactly the documented surface; a change here is deliberate."""
    assert testing.__all__ == [
        "CANCELLED",
        "NO_FAULTS",
        "RESET",
        "ClusterGroup",
        "CredentialConfig",
        "ExecutableNotFound",
        "Faults",
        "Latency",
        "LaunchError",
        "Limits",
        "RedisNode",
        "SentinelGroup",
        "SimulatedUpstream",
        "UpstreamConfig",
        "find_executable",
        "free_port",
        "running_cluster",
        "running_redis",
        "running_sentinel",
        "wait_until",
    ]


def test_every_exported_name_exists() -> None:
    """Every name in ``proxy.testing.__all__`` is importable from ``proxy.testing``."""
    missing = [name for name in testing.__all__ if not hasattr(testing, name)]
    assert missing == []


def test_launch_errors_share_one_root() -> None:
    """A missing executable is a LaunchError, and both are RuntimeErrors (a program's failure)."""
    assert issubclass(testing.ExecutableNotFound, testing.LaunchError)
    assert issubclass(testing.LaunchError, RuntimeError)


def test_the_upstream_runs_as_a_module_without_a_warning() -> None:
    """``python -m proxy.testing.upstream`` does not find its module imported by the package
    first (runpy's RuntimeWarning, an error under ``-W error``)."""
    done = subprocess.run(
        [sys.executable, "-W", "error", "-m", "proxy.testing.upstream", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
