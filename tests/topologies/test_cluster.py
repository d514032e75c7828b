"""Redis Cluster: a three-node cluster, every script through the cluster client, each pool's keys
in one slot, and two pools on two different nodes."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from redis.crc import key_slot

from broker import BrokerSettings, NoSessionAvailable, Outcome, Pool, PoolKeys, Session, open_store
from broker.preamble import library_name
from broker.store import Store
from proxy.config.pools import load_pools
from proxy.config.settings import Settings
from proxy.replica.replica import Replica
from proxy.serve import start as start_replica
from proxy.testing import RedisNode, SimulatedUpstream, running_cluster


@pytest.fixture
def nodes(redis_executable: str, redis_cli: str, tmp_path: Path) -> Iterator[list[RedisNode]]:
    """The nodes of a three-master cluster, every slot served."""
    with running_cluster(
        masters=3, executable=redis_executable, cli=redis_cli, directory=tmp_path / "cluster"
    ) as cluster:
        yield cluster.nodes


def owner_of(slot: int, nodes: list[RedisNode]) -> RedisNode:
    with nodes[0].client() as client:
        ranges = client.execute_command("CLUSTER SLOTS")
    for start, end, primary, *_ in ranges:
        if start <= slot <= end:
            return next(node for node in nodes if node.port == int(primary[1]))
    raise AssertionError(f"slot {slot} has no owner")


def pools_on_two_nodes(nodes: list[RedisNode]) -> tuple[str, str]:
    """Two pool names whose hash tags fall on different nodes (the first such pair of
    tenant-0, tenant-1, ...: deterministic, since slots are a hash of the name)."""
    first = "tenant-0"
    first_owner = owner_of(key_slot(first.encode()), nodes)
    for n in range(1, 100):
        name = f"tenant-{n}"
        if owner_of(key_slot(name.encode()), nodes).port != first_owner.port:
            return first, name
    raise AssertionError("no second pool name on another node")


async def exercise(pool: Pool, sessions: list[Session]) -> None:
    """Every script: sync, acquire (also with exclude), renew, release with each outcome,
    a replayed release, a shrinking sync and a refused acquire."""
    assert await pool.sync(sessions) == len(sessions)
    held = await pool.acquire()
    held = await pool.renew(held)
    for outcome in Outcome:
        lease = await pool.acquire(exclude=[held.session_id])
        assert lease.session_id != held.session_id
        released = await pool.release(lease, outcome, latency_ms=10, retry_after_ms=60_000)
        assert released.status == "released"
        assert (await pool.release(lease, outcome)).status == "duplicate"
    assert await pool.sync(sessions[1:]) == len(sessions) - 1
    assert (await pool.release(held, Outcome.SUCCESS)).status == "released"
    with pytest.raises(NoSessionAvailable):
        await pool.acquire(exclude=[s.id for s in sessions])


async def test_every_script_runs_on_a_cluster_and_pools_spread(nodes: list[RedisNode]) -> None:
    """Through a cluster client seeded with one node: all scripts work; every key of a pool
    sits in one slot on one node; two pools live on two different nodes."""
    names = pools_on_two_nodes(nodes)
    settings = BrokerSettings(redis_url=f"redis://127.0.0.1:{nodes[0].port}/0", redis_cluster=True)
    store: Store = open_store(settings)
    try:
        for name in names:
            sessions = [Session(id=f"{name}-s{n}", secret=f"secret-{n}") for n in range(12)]
            await exercise(Pool(store, settings, name=name), sessions)
    finally:
        await store.aclose()

    holders: dict[str, set[int]] = {name: set() for name in names}
    for node in nodes:
        with node.client() as client:
            for key in client.scan_iter(count=1000):
                name = next(n for n in names if key.startswith(f"sb:{{{n}}}:"))
                assert key_slot(key.encode()) == key_slot(name.encode()), key
                holders[name].add(node.port)
    for name in names:
        with owner_of(key_slot(name.encode()), nodes).client() as client:
            keys = PoolKeys(name)
            assert client.exists(keys.pool, keys.members, keys.session(f"{name}-s0")) == 3
    assert [len(ports) for ports in holders.values()] == [1, 1]
    assert holders[names[0]] != holders[names[1]]


def libraries(node: RedisNode) -> list[str]:
    with node.client() as client:
        return [entry[entry.index("library_name") + 1] for entry in client.function_list()]


@pytest.mark.parametrize("flushed", ["owner", "every-node"])
async def test_library_loaded_where_a_node_lacks_it(nodes: list[RedisNode], flushed: str) -> None:
    """A node that lacks the library (a restart, a failed-over replica, a node added later)
    answers "Function not found"; the library is loaded on every primary and the call made
    again."""
    settings = BrokerSettings(redis_url=f"redis://127.0.0.1:{nodes[1].port}/0", redis_cluster=True)
    store: Store = open_store(settings)
    owner = owner_of(key_slot(b"flushed"), nodes)
    lacking = [owner] if flushed == "owner" else nodes
    try:
        pool = Pool(store, settings, name="flushed")
        await pool.sync([Session(id=n, secret=f"secret-{n}", max_concurrency=1) for n in "ab"])
        for node in lacking:
            with node.client() as client:
                client.function_flush()
        leases = await asyncio.gather(pool.acquire(), pool.acquire())
        assert {lease.session_id for lease in leases} == {"a", "b"}
        assert [libraries(node) for node in nodes] == [[library_name()]] * len(nodes)
        for node in lacking:
            with node.client() as client:
                client.function_flush()
        for lease in leases:
            assert (await pool.release(lease, Outcome.SUCCESS)).status == "released"
    finally:
        await store.aclose()


async def test_a_script_call_is_one_round_trip(nodes: list[RedisNode]) -> None:
    """The cluster client finds an FCALL's node from its key: no node is asked where the keys
    are (COMMAND GETKEYS), so each operation stays one command."""
    settings = BrokerSettings(redis_url=f"redis://127.0.0.1:{nodes[0].port}/0", redis_cluster=True)
    store: Store = open_store(settings)
    try:
        pool = Pool(store, settings, name="trips")
        await pool.sync([Session(id=n, secret=f"secret-{n}") for n in "ab"])
        for node in nodes:
            with node.client() as client:
                client.config_resetstat()
        for _ in range(5):
            await pool.release(await pool.acquire(), Outcome.SUCCESS)
    finally:
        await store.aclose()
    counted: dict[str, int] = {}
    for node in nodes:
        with node.client() as client:
            for name, stats in client.info("commandstats").items():
                counted[name] = counted.get(name, 0) + int(stats["calls"])
    assert counted.get("cmdstat_fcall") == 10
    assert "cmdstat_command|getkeys" not in counted


async def test_a_replica_serves_pools_on_two_nodes(nodes: list[RedisNode], tmp_path: Path) -> None:
    """One replica with two pools whose hash tags fall on different nodes: requests routed to
    either pool are served, each pool's keys on its own node (pools spread over the shards)."""
    names = pools_on_two_nodes(nodes)
    sim = SimulatedUpstream()
    runner = web.AppRunner(sim.app(), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    upstream = f"http://127.0.0.1:{runner.addresses[0][1]}"
    pools = {
        name: {"sessions": [{"id": f"s{n}", "secret": f"secret-{name}-{n}"} for n in range(2)]}
        for name in names
    }
    path = tmp_path / "pools.json"
    path.write_text(json.dumps({"pools": pools, "default_pool": names[0]}))
    settings = Settings(
        upstream_url=upstream,
        sessions_file=str(path),
        redis_url=f"redis://127.0.0.1:{nodes[2].port}/0",
        redis_cluster=True,
        listen="127.0.0.1:0",
        admin_listen="127.0.0.1:0",
    )
    running = await start_replica(Replica(settings, load_pools(settings)))
    try:
        await asyncio.wait_for(running.replica.synced.wait(), 20)
        async with aiohttp.ClientSession() as http:
            for name in names * 3:
                headers = {"X-Pool": name}
                async with http.post(f"{running.proxy_url}/echo", headers=headers) as response:
                    assert response.status == 200
    finally:
        await running.stop()
        await runner.cleanup()
    for name in names:
        served = sum(sim.attempts(f"secret-{name}-{n}", 200) for n in range(2))
        assert served == 3
        with owner_of(key_slot(name.encode()), nodes).client() as client:
            assert client.exists(f"sb:{{{name}}}:s:s0")
    assert owner_of(key_slot(names[0].encode()), nodes) != owner_of(
        key_slot(names[1].encode()), nodes
    )
