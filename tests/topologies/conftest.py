"""Fixtures of the topology tests: private ``redis-server`` processes (masters, replicas,
sentinels, cluster nodes) on free ports, all stopped after the test.

Like tests/conftest.py, a missing ``redis-server`` or ``redis-cli`` skips these tests with a
reason, except in CI (``CI=true``), where it fails them.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from tests.conftest import any_free_port, redis_command, required_executable

#: How long a server may take to answer, and how long a topology may take to settle.
START_TIMEOUT_S = 10.0


def _executable(name: str) -> str:
    return required_executable(name, "the topology tests")


def wait_for(what: str, check: Callable[[], bool], timeout_s: float = START_TIMEOUT_S) -> None:
    """Poll ``check`` until it is true; fail the test naming ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except redis.RedisError:
            pass
        time.sleep(0.05)
    pytest.fail(f"timed out after {timeout_s} s waiting for {what}")


@dataclass
class Node:
    """One running server."""

    name: str
    port: int
    process: subprocess.Popen[bytes]
    log: Path
    username: str | None = None
    password: str | None = None

    def client(self) -> redis.Redis:
        return redis.Redis(
            host="127.0.0.1",
            port=self.port,
            username=self.username,
            password=self.password,
            decode_responses=True,
            socket_timeout=5,
        )

    def ping(self) -> bool:
        with self.client() as client:
            return bool(client.ping())


class Servers:
    """Starts servers in a private folder; ``stop_all`` ends every one of them."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.executable = _executable("redis-server")
        self.nodes: list[Node] = []

    def start(
        self,
        name: str,
        *options: str,
        config: str | None = None,
        username: str | None = None,
        password: str | None = None,
    ) -> Node:
        """Start ``redis-server`` with ``options`` (and a config file holding ``config``, which
        sentinels need: they rewrite it); returns once the server answers PING."""
        port = any_free_port()
        workdir = self.folder / name
        workdir.mkdir()
        log = workdir / "server.log"
        command = redis_command(self.executable, port, workdir, log, *options)
        if config is not None:
            conf = workdir / "server.conf"
            conf.write_text(config.replace("{port}", str(port)))
            command.insert(1, str(conf))  # a config file comes before the options
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL)
        node = Node(name, port, process, log, username, password)
        self.nodes.append(node)

        def answers() -> bool:
            if process.poll() is not None:
                pytest.fail(f"{name} exited with {process.returncode}: {log.read_text()}")
            return node.ping()

        wait_for(f"{name} to answer PING", answers)
        return node

    wait_for = staticmethod(wait_for)
    free_port = staticmethod(any_free_port)

    def stop_all(self) -> None:
        for node in self.nodes:
            node.process.terminate()
        for node in self.nodes:
            try:
                node.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                node.process.kill()
                node.process.wait()


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[Servers]:
    """Start private redis-server processes on free ports; all are stopped after the test."""
    started = Servers(tmp_path)
    try:
        yield started
    finally:
        started.stop_all()


@pytest.fixture
def redis_cli() -> str:
    """Path of ``redis-cli`` (creates the cluster)."""
    return _executable("redis-cli")
