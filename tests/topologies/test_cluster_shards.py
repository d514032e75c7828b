"""One pool spread over 3 shards on a three-node Redis Cluster, end to end: a replica serves it
through real sockets, each shard's keys sit on their own node, requests reach sessions of every
shard, and the admin API shows one pool."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from redis.crc import key_slot

from broker.shard_layout import shard_names, shard_of
from proxy.config.pools import load_pools
from proxy.config.settings import Settings
from proxy.replica.replica import Replica
from proxy.serve import start as start_replica
from proxy.testing import RedisNode, SimulatedUpstream, running_cluster
from tests.topologies.test_cluster import owner_of

TOKEN = "admin-token-0123456789"
SESSIONS = 9


@pytest.fixture
def nodes(redis_executable: str, redis_cli: str, tmp_path: Path) -> Iterator[list[RedisNode]]:
    with running_cluster(
        masters=3, executable=redis_executable, cli=redis_cli, directory=tmp_path / "cluster"
    ) as cluster:
        yield cluster.nodes


async def test_a_replica_serves_one_pool_from_three_nodes(nodes: list[RedisNode]) -> None:
    """POOL_SHARDS=3: the three shards land on the three nodes, every shard serves requests,
    a session's state is in its shard only, and /admin/pool counts the pool as one."""
    names = shard_names("wide", 3)
    owners = {owner_of(key_slot(name.encode()), nodes).port for name in names}
    assert len(owners) == 3

    sim = SimulatedUpstream()
    runner = web.AppRunner(sim.app(), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    secrets = [f"secret-{n}" for n in range(SESSIONS)]
    settings = Settings(
        upstream_url=f"http://127.0.0.1:{runner.addresses[0][1]}",
        sessions=",".join(secrets),
        pool="wide",
        pool_shards=3,
        redis_url=f"redis://127.0.0.1:{nodes[0].port}/0",
        redis_cluster=True,
        listen="127.0.0.1:0",
        admin_listen="127.0.0.1:0",
        admin_token=TOKEN,
    )
    running = await start_replica(Replica(settings, load_pools(settings)))
    try:
        await asyncio.wait_for(running.replica.synced.wait(), 20)
        async with aiohttp.ClientSession() as http:
            for _ in range(30):
                async with http.post(f"{running.proxy_url}/echo") as response:
                    assert response.status == 200
            auth = {"Authorization": f"Bearer {TOKEN}"}
            async with http.get(f"{running.ops_url}/admin/pool", headers=auth) as response:
                assert response.status == 200
                summary = await response.json()
            async with http.get(f"{running.ops_url}/admin/sessions", headers=auth) as response:
                assert response.status == 200
                views = await response.json()
        ids = sorted(view["id"] for view in views["sessions"])
        used = sorted(view["id"] for view in views["sessions"] if view["leases"] > 0)
    finally:
        await running.stop()
        await runner.cleanup()

    assert summary["pool"] == "wide"
    assert summary["sessions"]["total"] == SESSIONS
    assert len(ids) == SESSIONS
    assert sum(sim.attempts(secret, 200) for secret in secrets) == 30
    assert {shard_of(session_id, 3) for session_id in used} == {0, 1, 2}
    for session_id in ids:
        home = names[shard_of(session_id, 3)]
        for name in names:
            with owner_of(key_slot(name.encode()), nodes).client() as client:
                assert bool(client.exists(f"sb:{{{name}}}:s:{session_id}")) == (name == home)
    for node in nodes:  # the unsharded layout is not used
        with node.client() as client:
            assert list(client.scan_iter(match="sb:{wide}:*")) == []
