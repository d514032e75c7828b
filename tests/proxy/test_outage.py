"""The Redis outage policy: the store is killed mid-traffic and restarted; the replicas recover
without a restart, answering 503 meanwhile (closed) or serving from a local pool (open)."""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import aiohttp
import pytest
import redis

if TYPE_CHECKING:
    from proxy.serve import RunningReplica
    from tests.proxy.conftest import StartReplica

CHAT = "/v1/chat/completions"
BODY = {"model": "m", "messages": []}


class RedisProcess:
    """A private redis-server on a fixed port that the test can kill and start again."""

    def __init__(self, workdir: Path) -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port: int = sock.getsockname()[1]
        self.workdir = workdir
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        executable = shutil.which("redis-server")
        assert executable is not None
        self.process = subprocess.Popen(
            [executable, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.workdir)],
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                if redis.Redis(port=self.port, socket_connect_timeout=0.2).ping():
                    return
            except redis.ConnectionError:
                time.sleep(0.05)
        pytest.fail("redis-server did not start")

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait()


@pytest.fixture
def killable_redis(redis_server: str, tmp_path: Path) -> Iterator[RedisProcess]:
    """Needs redis-server like the shared fixture (which skips or fails without it)."""
    server = RedisProcess(tmp_path)
    server.start()
    yield server
    if server.process is not None and server.process.poll() is None:
        server.kill()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)) as session:
        yield session


async def status_of(http: aiohttp.ClientSession, replica: RunningReplica) -> int:
    async with http.post(replica.proxy_url + CHAT, json=BODY) as response:
        await response.read()
        return response.status


async def ready(http: aiohttp.ClientSession, replica: RunningReplica) -> int:
    async with http.get(replica.ops_url + "/readyz") as response:
        return response.status


async def until(check, *, within_s: float) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if await check():
            return
        await asyncio.sleep(0.1)
    pytest.fail("the condition never held")


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["closed", "open"])
async def test_store_killed_and_restarted(
    start_replica: StartReplica,
    killable_redis: RedisProcess,
    http: aiohttp.ClientSession,
    mode: str,
) -> None:
    """closed: 503 store_unavailable and not ready while Redis is down; open: still serving.
    Either way: after Redis returns, both replicas serve from the shared pool again."""
    replicas = [
        await start_replica(redis_url=killable_redis.url, redis_failure_mode=mode) for _ in range(2)
    ]
    for replica in replicas:
        assert await status_of(http, replica) == 200
    killable_redis.kill()
    during = [await status_of(http, replicas[i % 2]) for i in range(6)]
    if mode == "closed":
        assert during == [503] * 6
        assert [await ready(http, r) for r in replicas] == [503, 503]
    else:
        assert during == [200] * 6
        assert [await ready(http, r) for r in replicas] == [200, 200]
    killable_redis.start()  # empty: nothing persisted

    async def all_shared_again() -> bool:
        return all(r.replica.leasing.store_up for r in replicas)

    await until(all_shared_again, within_s=15)
    for replica in replicas:
        assert await status_of(http, replica) == 200
        assert await ready(http, replica) == 200
    members = redis.Redis.from_url(killable_redis.url).zcard("sb:{default}:members")
    assert members == 3  # the sessions were synced into the new, empty store
