"""Fixtures shared by every test folder: a real ``redis-server`` on a free port.

The server is started once per test session and stopped after it. Where ``redis-server`` is not
installed the tests that need it skip with a reason, except in CI (``CI=true``), where a missing
server is a failure: a CI run must not pass by skipping half the suite.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import redis

#: How long a freshly started server may take to answer PING.
REDIS_START_TIMEOUT_S = 10.0


def any_free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _wait_until_ready(process: subprocess.Popen[bytes], url: str, log: Path) -> None:
    deadline = time.monotonic() + REDIS_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"redis-server exited with {process.returncode}: {log.read_text()}")
        client = redis.Redis.from_url(url, socket_connect_timeout=0.5)
        try:
            if client.ping():
                return
        except redis.ConnectionError:
            time.sleep(0.05)
        finally:
            client.close()
    pytest.fail(f"redis-server did not answer within {REDIS_START_TIMEOUT_S} s: {log.read_text()}")


@contextmanager
def running_redis(executable: str, workdir: Path) -> Iterator[str]:
    """A ``redis-server`` on a free port for the duration of the block; yields its URL."""
    workdir.mkdir(parents=True, exist_ok=True)
    log = workdir / "redis.log"
    port = any_free_port()
    process = subprocess.Popen(
        redis_command(executable, port, workdir, log), stdin=subprocess.DEVNULL
    )
    url = f"redis://127.0.0.1:{port}/0"
    try:
        _wait_until_ready(process, url, log)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def redis_command(executable: str, port: int, workdir: Path, log: Path, *options: str) -> list[str]:
    """A ``redis-server`` on 127.0.0.1:``port`` that keeps nothing on disk, then ``options``."""
    return [
        executable,
        "--port", str(port),
        "--bind", "127.0.0.1",
        "--save", "",
        "--appendonly", "no",
        "--dir", str(workdir),
        "--logfile", str(log),
        *options,
    ]  # fmt: skip


def required_executable(name: str, tests: str = "the real-Redis tests") -> str:
    """The path of ``name``; skips the test when it is not on PATH, fails it under CI=true."""
    executable = shutil.which(name)
    if executable is None:
        reason = f"{name} is not on PATH"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason}; CI=true requires {tests} to run")
        pytest.skip(reason)
    return executable


def _redis_executable() -> str:
    return required_executable("redis-server")


@pytest.fixture
def free_port() -> Callable[[], int]:
    """``free_port()``: a free TCP port on 127.0.0.1, for a process the test starts."""
    return any_free_port


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of a private ``redis-server`` (database 0) on a free port, never the shared 6379."""
    with running_redis(_redis_executable(), tmp_path_factory.mktemp("redis")) as url:
        yield url


@pytest.fixture
def fresh_redis(tmp_path: Path) -> Iterator[str]:
    """URL of another, empty ``redis-server`` of this test alone (a move to a new Redis)."""
    with running_redis(_redis_executable(), tmp_path / "fresh-redis") as url:
        yield url
