"""Live configuration: the sessions file changes under running replicas, as a mounted Kubernetes
Secret does (a symlink swapped to a new folder), and on SIGHUP."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections import Counter
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import aiohttp
import pytest
import redis.asyncio

from broker import load_sessions
from proxy.serve import RunningReplica

if TYPE_CHECKING:
    from proxy.testing import SimulatedUpstream
    from tests.proxy.conftest import StartReplica

MEMBERS = "sb:{default}:members"


class MountedSecret:
    """A folder laid out as the kubelet lays out a Secret volume: ``sessions.json`` links to
    ``..data/sessions.json``, ``..data`` links to a timestamped folder, and an update writes a new
    folder and swaps ``..data`` atomically. The new file gets the old one's mtime, so only its
    content tells the change."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.version = 0
        self.path = folder / "sessions.json"

    def write(self, secrets: Mapping[str, str]) -> None:
        self.version += 1
        target = self.folder / f"..2026_{self.version:02d}"
        target.mkdir()
        sessions = [{"id": sid, "secret": secret} for sid, secret in secrets.items()]
        (target / "sessions.json").write_text(json.dumps({"sessions": sessions}))
        if self.version > 1:
            first = self.folder / "..2026_01" / "sessions.json"
            os.utime(
                target / "sessions.json", ns=(first.stat().st_atime_ns, first.stat().st_mtime_ns)
            )
        (self.folder / "..data_tmp").symlink_to(target.name)
        os.replace(self.folder / "..data_tmp", self.folder / "..data")
        if not self.path.is_symlink():
            self.path.symlink_to("..data/sessions.json")


async def drive(
    http: aiohttp.ClientSession, url: str, statuses: Counter[int], stop: asyncio.Event
) -> None:
    while not stop.is_set():
        async with http.post(f"{url}/v1/chat/completions", json={"model": "m"}) as response:
            await response.read()
            statuses[response.status] += 1


async def wait_until_serving(replica: RunningReplica, ids: set[str]) -> None:
    for _ in range(200):
        if set(replica.replica.pool_plan().secrets) == ids:
            return
        await asyncio.sleep(0.05)
    pytest.fail(
        f"the replica still serves {sorted(replica.replica.pool_plan().secrets)}, not {sorted(ids)}"
    )


@pytest.mark.slow
async def test_add_remove_and_rotate_during_traffic(
    tmp_path: Path,
    shared_redis: str,
    start_replica: StartReplica,
    sim: SimulatedUpstream,
    http: aiohttp.ClientSession,
) -> None:
    """Two replicas under traffic; the file gains d, loses a and rotates b's secret. One replica
    polls and sees it at once, the other only on its SIGHUP handler a second later, so they
    disagree meanwhile. No client request fails; afterwards d is used, a and b's old secret are
    not, and b kept its history."""
    sim.latency_s = 0.01
    secret = MountedSecret(tmp_path)
    secret.write({"a": "secret-a", "b": "secret-b-old", "c": "secret-c"})
    sessions = load_sessions(secrets=None, path=secret.path)
    common = {"redis_url": shared_redis, "sessions_file": str(secret.path)}
    polling = await start_replica(sessions, **common, sessions_reload_interval=0.1)
    signalled = await start_replica(sessions, **common, sessions_reload_interval=0)
    store = redis.asyncio.Redis.from_url(shared_redis, decode_responses=True)
    statuses: Counter[int] = Counter()
    stop = asyncio.Event()
    clients = [
        asyncio.create_task(drive(http, replica.proxy_url, statuses, stop))
        for replica in (polling, signalled)
        for _ in range(3)
    ]
    try:
        await asyncio.sleep(0.5)
        b_before = await store.hgetall("sb:{default}:s:b")
        assert int(b_before["n_success"]) > 0

        secret.write({"b": "secret-b-new", "c": "secret-c", "d": "secret-d"})
        await wait_until_serving(polling, {"b", "c", "d"})
        assert set(signalled.replica.pool_plan().secrets) == {"a", "b", "c"}
        await asyncio.sleep(1.0)  # the replicas disagree, under traffic
        assert set(await store.zrange(MEMBERS, 0, -1)) == {"a", "b", "c", "d"}

        signalled.replica.request_reload()
        await wait_until_serving(signalled, {"b", "c", "d"})
        await asyncio.sleep(0.2)  # requests that started with the old sessions finish
        gone = {s: sim.attempts(s) for s in ("secret-a", "secret-b-old")}
        fresh = {s: sim.attempts(s) for s in ("secret-b-new", "secret-d")}
        await asyncio.sleep(1.0)
    finally:
        stop.set()
        await asyncio.gather(*clients)

    assert set(statuses) == {200}, statuses
    assert statuses[200] > 50
    assert {s: sim.attempts(s) for s in gone} == gone
    assert all(sim.attempts(s) > fresh[s] for s in fresh), fresh
    assert set(await store.zrange(MEMBERS, 0, -1)) == {"b", "c", "d"}
    assert (await store.hget("sb:{default}:s:a", "state")) == "removed"
    b_after = await store.hgetall("sb:{default}:s:b")
    assert b_after["ordinal"] == b_before["ordinal"]
    assert int(b_after["n_success"]) > int(b_before["n_success"])
    await store.aclose()


async def test_an_invalid_file_is_ignored_until_fixed(
    tmp_path: Path,
    shared_redis: str,
    start_replica: StartReplica,
    http: aiohttp.ClientSession,
) -> None:
    """A half-written or invalid sessions file changes nothing (the replica keeps serving what
    it has); the corrected file is picked up."""
    path = tmp_path / "sessions.json"
    path.write_text(json.dumps({"sessions": [{"id": "a", "secret": "secret-a"}]}))
    running = await start_replica(
        load_sessions(secrets=None, path=path), redis_url=shared_redis, sessions_file=str(path)
    )
    path.write_text('{"sessions": [{"id": "a", "secr')
    await running.replica.reload()
    path.unlink()
    await running.replica.reload()
    assert set(running.replica.pool_plan().secrets) == {"a"}
    async with http.post(f"{running.proxy_url}/v1/chat/completions", json={}) as response:
        assert response.status == 200
    path.write_text(json.dumps({"sessions": [{"id": "b", "secret": "secret-b"}]}))
    await running.replica.reload()
    assert set(running.replica.pool_plan().secrets) == {"b"}
    store = redis.asyncio.Redis.from_url(shared_redis, decode_responses=True)
    assert await store.zrange(MEMBERS, 0, -1) == ["b"]
    await store.aclose()


@pytest.mark.slow
async def test_sighup_reloads_a_running_process(
    tmp_path: Path,
    shared_redis: str,
    upstream_url: str,
    http: aiohttp.ClientSession,
    free_port: Callable[[], int],
) -> None:
    """``session-broker serve`` with polling off: SIGHUP makes it read the file and sync the new
    session; the secret appears in no log line."""
    secret = MountedSecret(tmp_path)
    secret.write({"a": "sk-first-secret"})
    ops_port = free_port()
    env = os.environ | {
        "UPSTREAM_URL": upstream_url,
        "SESSIONS_FILE": str(secret.path),
        "SESSIONS_RELOAD_INTERVAL": "0",
        "REDIS_URL": shared_redis,
        "LISTEN": f"127.0.0.1:{free_port()}",
        "ADMIN_LISTEN": f"127.0.0.1:{ops_port}",
        "LOG_LEVEL": "debug",
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "proxy", "serve", env=env, stderr=asyncio.subprocess.PIPE
    )
    store = redis.asyncio.Redis.from_url(shared_redis, decode_responses=True)
    try:
        for _ in range(200):
            if await store.zrange(MEMBERS, 0, -1) == ["a"]:
                break
            await asyncio.sleep(0.05)
        secret.write({"a": "sk-rotated-secret", "b": "sk-second-secret"})
        await asyncio.sleep(0.3)
        assert await store.zrange(MEMBERS, 0, -1) == ["a"]  # no polling: nothing yet
        process.send_signal(signal.SIGHUP)
        for _ in range(200):
            if await store.zrange(MEMBERS, 0, -1) == ["a", "b"]:
                break
            await asyncio.sleep(0.05)
        assert await store.zrange(MEMBERS, 0, -1) == ["a", "b"]
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 15) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        await store.aclose()
    stderr = (await process.stderr.read()).decode()  # type: ignore[union-attr]
    assert "sessions file changed" in stderr
    assert "Traceback" not in stderr
    assert "sk-" not in stderr
