"""Fixtures shared by every test folder: a real ``redis-server`` on a free port, and the
executables for tests that start their own (Sentinel groups, clusters).

The shared server is started once per test session and stopped after it, by the launcher the
project ships (``proxy.testing``). Where ``redis-server`` is not installed the tests that need it
skip with a reason, except in CI (``CI=true``), where a missing server is a failure: a CI run must
not pass by skipping half the suite.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from proxy import testing


def required_executable(name: str, tests: str = "the real-Redis tests") -> str:
    """The path of ``name``; skips the test when it is not on PATH, fails it under CI=true."""
    try:
        return testing.find_executable(name)
    except testing.ExecutableNotFound as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{exc}; CI=true requires {tests} to run")
        pytest.skip(str(exc))


@pytest.fixture
def redis_executable() -> str:
    """Path of ``redis-server``, for the servers a test starts itself (Sentinel, Cluster)."""
    return required_executable("redis-server")


@pytest.fixture
def redis_cli() -> str:
    """Path of ``redis-cli`` (creates a cluster)."""
    return required_executable("redis-cli", "the cluster tests")


@pytest.fixture
def free_port() -> Callable[[], int]:
    """``free_port()``: a free TCP port on 127.0.0.1, for a process the test starts."""
    return testing.free_port


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of a private ``redis-server`` (database 0) on a free port, never the shared 6379."""
    executable = required_executable("redis-server")
    folder = tmp_path_factory.mktemp("redis")
    with testing.running_redis(executable=executable, directory=folder) as server:
        yield server.url


@pytest.fixture
def fresh_redis(redis_executable: str, tmp_path: Path) -> Iterator[str]:
    """URL of another, empty ``redis-server`` of this test alone (a move to a new Redis)."""
    folder = tmp_path / "fresh-redis"
    with testing.running_redis(executable=redis_executable, directory=folder) as server:
        yield server.url
