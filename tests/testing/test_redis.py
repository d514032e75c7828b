"""The shipped redis-server launcher: a server, a Sentinel group and a cluster on free ports,
ready when yielded, stopped after, with nothing persisted; a clear error when one cannot start."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis

from proxy.testing import (
    ExecutableNotFound,
    LaunchError,
    running_cluster,
    running_redis,
    running_sentinel,
)


def test_a_server_answers_persists_nothing_and_stops(redis_executable: str) -> None:
    """``running_redis`` yields a server of 127.0.0.1 that answers as itself, saves nothing
    (no RDB, no AOF) and is stopped, its temporary folder removed, when the block ends."""
    with running_redis(executable=redis_executable) as node:
        with node.client() as client:
            assert int(client.info("server")["process_id"]) == node.process.pid
            assert client.config_get("save") == {"save": ""}
            assert client.config_get("appendonly") == {"appendonly": "no"}
        assert node.url == f"redis://127.0.0.1:{node.port}/0"
        folder = node.log.parent
        assert folder.is_dir()
    assert node.process.returncode is not None
    assert not folder.exists()


def test_a_password_is_required_and_carried_by_the_url(redis_executable: str) -> None:
    """With a username and password the server refuses an anonymous client; the node's URL and
    client log in as that ACL user."""
    with running_redis(username="app", password="p@ss word", executable=redis_executable) as node:
        assert "p%40ss%20word" in node.url
        assert "p@ss word" not in repr(node)
        with redis.Redis(*node.address) as anonymous, pytest.raises(redis.AuthenticationError):
            anonymous.ping()
        with redis.Redis.from_url(node.url) as client:
            assert client.acl_whoami() == "app"


def test_a_given_directory_keeps_the_log(redis_executable: str, tmp_path: Path) -> None:
    """With ``directory`` the server's files are written there and kept after it stops."""
    with running_redis(executable=redis_executable, directory=tmp_path) as node:
        assert node.log.is_relative_to(tmp_path)
    assert "Ready to accept connections" in node.log.read_text()


def test_a_missing_executable_is_named() -> None:
    """An executable that is not on PATH raises ExecutableNotFound naming it, before anything
    starts."""
    with (
        pytest.raises(ExecutableNotFound, match="no-such-redis-server is not on PATH"),
        running_redis(executable="no-such-redis-server"),
    ):
        pytest.fail("started without an executable")


def test_a_server_that_cannot_start_raises_with_its_output(redis_executable: str) -> None:
    """A server that exits at once (a bad option) raises LaunchError quoting what it said."""
    with (
        pytest.raises(LaunchError, match="Bad directive") as caught,
        running_redis("--no-such-option", "1", executable=redis_executable),
    ):
        pytest.fail("started with a bad option")
    assert not isinstance(caught.value, ExecutableNotFound)


def test_a_sentinel_group_is_ready_when_yielded(redis_executable: str) -> None:
    """``running_sentinel`` yields once both replicas follow the master and both sentinels know
    the master, each replica and each other; every process is stopped after."""
    with running_sentinel(
        replicas=2, sentinels=2, sentinel_password="watch", executable=redis_executable
    ) as group:
        for replica in group.replicas:
            with replica.client() as client:
                assert client.info("replication")["master_link_status"] == "up"
        for sentinel in group.sentinels:
            with sentinel.client() as client:
                address = client.sentinel_get_master_addr_by_name(group.master_name)
                assert (address[0], int(address[1])) == group.master.address
                assert len(client.sentinel_slaves(group.master_name)) == 2
                assert len(client.sentinel_sentinels(group.master_name)) == 1
        assert len(group.sentinel_addresses) == 2
        processes = [n.process for n in (group.master, *group.replicas, *group.sentinels)]
    assert all(process.returncode is not None for process in processes)


def test_a_cluster_serves_every_slot(redis_executable: str, redis_cli: str) -> None:
    """``running_cluster`` yields three masters sharing every slot; a cluster client seeded with
    its URL reaches keys on every node."""
    with running_cluster(executable=redis_executable, cli=redis_cli) as cluster:
        assert len(cluster.nodes) == 3
        with redis.RedisCluster.from_url(cluster.url, decode_responses=True) as client:
            slots = client.cluster_slots()
            assert sum(end - start + 1 for start, end in slots) == 16384
            for n in range(30):
                client.set(f"key-{n}", n)
            assert [client.get(f"key-{n}") for n in range(30)] == [str(n) for n in range(30)]
        processes = [node.process for node in cluster.nodes]
    assert all(process.returncode is not None for process in processes)


def test_a_cluster_needs_three_masters() -> None:
    """redis-cli cannot create a cluster of fewer than three masters: refused up front."""
    with pytest.raises(ValueError, match="at least 3 masters"), running_cluster(masters=2):
        pytest.fail("started a two-master cluster")
