"""A pool spread over shards behind a replica, through real sockets: requests are served from
every shard, the operator CLI and the admin API show one pool, and a reload that changes the
shard count moves the pool to its new shards."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import aiohttp
import redis.asyncio

from broker.registry import list_pools
from broker.shard_layout import shard_names, shard_of
from tests.proxy.test_operator_cli import cli

if TYPE_CHECKING:
    from tests.proxy.conftest import StartReplica

CHAT = "/v1/chat/completions"
BODY = {"model": "m", "messages": []}
IDS = [f"k{n}" for n in range(9)]
TOKEN = "admin-token-0123456789"


def write_pools(path: Path, shards: int) -> None:
    sessions = [{"id": sid, "secret": f"secret-{sid}"} for sid in IDS]
    path.write_text(json.dumps({"pools": {"chat": {"sessions": sessions, "shards": shards}}}))


async def members(url: str, name: str) -> set[str]:
    client = redis.asyncio.Redis.from_url(url, decode_responses=True)
    try:
        return set(await client.zrange(f"sb:{{{name}}}:members", 0, -1))
    finally:
        await client.aclose()


async def test_a_sharded_pool_is_served_and_shown_as_one(
    start_replica: StartReplica, shared_redis: str, tmp_path: Path
) -> None:
    """shards = 3 in the pools file: each session is in its shard; requests succeed; the admin
    API and `status` (which finds the shard count in sb:pools) count one pool of 9."""
    path = tmp_path / "pools.json"
    write_pools(path, 3)
    replica = await start_replica(
        sessions=None, sessions_file=str(path), redis_url=shared_redis, admin_token=TOKEN
    )
    names = shard_names("chat", 3)
    for k, name in enumerate(names):
        assert await members(shared_redis, name) == {s for s in IDS if shard_of(s, 3) == k}
    assert await members(shared_redis, "chat") == set()
    auth = {"Authorization": f"Bearer {TOKEN}"}
    async with aiohttp.ClientSession() as http:
        for _ in range(12):
            async with http.post(replica.proxy_url + CHAT, json=BODY) as response:
                assert response.status == 200
        async with http.get(f"{replica.ops_url}/admin/pool", headers=auth) as response:
            summary = await response.json()
    assert summary["pool"] == "chat"
    assert summary["sessions"]["total"] == 9
    assert (await list_pools(replica.replica.leasing.store))["chat"].shards == 3
    status = await cli("status", "--json", env={"REDIS_URL": shared_redis, "POOL": "chat"})
    assert status.returncode == 0, status.stderr
    document = json.loads(status.stdout)
    assert sorted(s["id"] for s in document["sessions"]) == IDS
    assert sum(s["leases"] for s in document["sessions"]) == 12


async def test_a_reload_changes_the_shard_count(
    start_replica: StartReplica, shared_redis: str, tmp_path: Path
) -> None:
    """From 3 shards to 1: the pool is served from its own hash tag at once, the old shards
    lose this replica's claim (their sessions leave them), and requests keep succeeding."""
    path = tmp_path / "pools.json"
    write_pools(path, 3)
    replica = await start_replica(sessions=None, sessions_file=str(path), redis_url=shared_redis)
    write_pools(path, 1)
    await replica.replica.reload()
    assert await members(shared_redis, "chat") == set(IDS)
    for name in shard_names("chat", 3):
        assert await members(shared_redis, name) == set()
    async with aiohttp.ClientSession() as http:
        for _ in range(3):
            async with http.post(replica.proxy_url + CHAT, json=BODY) as response:
                assert response.status == 200
    assert (await replica.replica.admin.summary()).sessions["total"] == 9
