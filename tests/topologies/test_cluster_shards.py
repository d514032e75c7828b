"""One pool spread over 3 shards on a three-node Redis Cluster, end to end: a replica serves it
through real sockets, each shard's keys sit on their own node, requests reach sessions of every
shard, and the admin API shows one pool; alerts, the census and snapshots read across nodes."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from redis.crc import key_slot

from broker import BrokerSettings, Outcome, Session, ShardedPool, open_pool, open_store
from broker.alerts import AlertRules, check_alerts
from broker.shard_admin import open_admin
from broker.shard_layout import shard_names, shard_of
from broker.snapshot import export_state
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
            async with http.get(f"{running.ops_url}/admin/fleet", headers=auth) as response:
                assert response.status == 200
                fleet = await response.json()
        ids = sorted(view["id"] for view in views["sessions"])
        used = sorted(view["id"] for view in views["sessions"] if view["leases"] > 0)
    finally:
        await running.stop()
        await runner.cleanup()

    assert summary["pool"] == "wide"
    # One replica, one claim id over the three shards (the clock read outside any pipeline).
    assert [replica["id"] for replica in fleet["replicas"]] == [fleet["replica"]]
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


async def test_alerts_snapshots_and_the_census_cross_nodes(nodes: list[RedisNode]) -> None:
    """Through the cluster client: the pool-wide all_rate_limited reads every shard's alerts
    (on three nodes), and the census and a snapshot add the shards up."""
    settings = BrokerSettings(
        redis_url=f"redis://127.0.0.1:{nodes[1].port}/0", redis_cluster=True, shards=3
    )
    store = open_store(settings)
    try:
        pool = open_pool(store, settings, name="spread")
        assert isinstance(pool, ShardedPool)
        firsts: dict[int, Session] = {}
        for n in range(100):
            firsts.setdefault(shard_of(f"x{n}", 3), Session(id=f"x{n}", secret=f"secret-{n}"))
        sessions = list(firsts.values())
        await pool.sync(sessions)
        rules = AlertRules(error_rate=0.5, window_ms=60_000)
        names = []
        for session in sessions:
            lease = await pool.acquire(exclude=[s.id for s in sessions if s is not session])
            await pool.release(lease, Outcome.RATE_LIMITED, retry_after_ms=60_000)
            names += [c.name for c in await check_alerts(pool, rules, attempts=1, errors=0)]
        assert names == ["all_rate_limited"]
        admin = open_admin(pool)
        census = await admin.census()
        assert census.sessions["cooling"] == 3
        snapshot = await export_state(admin)
        assert sorted(s.id for s in snapshot.sessions) == sorted(s.id for s in sessions)
    finally:
        await store.aclose()
