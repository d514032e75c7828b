"""Private ``redis-server`` processes for tests and benchmarks: one server (``running_redis``), a
Sentinel group (``running_sentinel``: a master, its replicas and sentinels) or a Cluster
(``running_cluster``: N masters joined by ``redis-cli --cluster create``).

Each is a context manager: it starts the servers on free ports of 127.0.0.1, waits until they
answer (and, for a group, until it has settled), yields their addresses and stops every server
when the block ends, however it ends. Nothing is persisted (no RDB, no AOF); the files a server
does write (its log, the configuration a sentinel or a cluster node rewrites) go to a temporary
folder removed afterwards, or to ``directory`` when given, where they are kept.

Their errors (``LaunchError``, ``ExecutableNotFound``) are those of ``proxy.testing.server``.
"""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from proxy.testing.server import (
    HOST,
    LaunchError,
    RedisNode,
    account_options,
    find_executable,
    free_port,
    servers,
    wait_until,
)

#: How long a group may take to settle: replicas in sync, sentinels aware, cluster slots served.
SETTLE_TIMEOUT_S = 30.0
#: redis-cli refuses to create a cluster of fewer masters.
MIN_CLUSTER_MASTERS = 3


@dataclass
class SentinelGroup:
    """A Sentinel deployment as started: the master (until a failover), its replicas and the
    sentinels that watch it under ``master_name``."""

    master_name: str
    master: RedisNode
    replicas: list[RedisNode]
    sentinels: list[RedisNode]

    @property
    def sentinel_addresses(self) -> list[tuple[str, int]]:
        return [sentinel.address for sentinel in self.sentinels]


@dataclass
class ClusterGroup:
    """A Redis Cluster of masters (no replicas); a cluster client needs any one node's URL."""

    nodes: list[RedisNode]

    @property
    def url(self) -> str:
        return self.nodes[0].url


def _settle(what: str, check: Callable[[], bool]) -> None:
    try:
        wait_until(what, check, timeout_s=SETTLE_TIMEOUT_S)
    except TimeoutError as exc:
        raise LaunchError(str(exc)) from exc


@contextlib.contextmanager
def running_redis(
    *options: str,
    username: str | None = None,
    password: str | None = None,
    executable: str = "redis-server",
    directory: Path | None = None,
    detached: bool = False,
) -> Iterator[RedisNode]:
    """One ``redis-server`` for the duration of the block; ``options`` are its command line's.

    With ``password`` it requires a login (``username``'s, as an ACL user, else the default
    user's). ``detached``: the server runs in its own session, so a Ctrl-C in the terminal reaches
    only this program, which stops it; on Linux it also gets SIGTERM when the thread that started
    it ends (for a program's main thread, not a test suite's worker threads).
    """
    with servers(executable, directory, detached=detached) as started:
        login = account_options(username, password)
        yield started.start("redis", *login, *options, username=username, password=password)


def _sentinel_config(
    master_name: str,
    master_port: int,
    quorum: int,
    username: str | None,
    password: str | None,
    sentinel_password: str | None,
    timeouts_ms: tuple[int, int],
) -> str:
    lines = [f"sentinel monitor {master_name} {HOST} {master_port} {quorum}"]
    if username is not None:
        lines.append(f"sentinel auth-user {master_name} {username}")
    if password is not None:
        lines.append(f"sentinel auth-pass {master_name} {password}")
    lines.append(f"sentinel down-after-milliseconds {master_name} {timeouts_ms[0]}")
    lines.append(f"sentinel failover-timeout {master_name} {timeouts_ms[1]}")
    if sentinel_password is not None:
        lines.append(f"requirepass {sentinel_password}")
    return "\n".join(lines) + "\n"


@contextlib.contextmanager
def running_sentinel(
    *options: str,
    replicas: int = 1,
    sentinels: int = 1,
    master_name: str = "mymaster",
    username: str | None = None,
    password: str | None = None,
    sentinel_password: str | None = None,
    down_after_ms: int = 2000,
    failover_timeout_ms: int = 10_000,
    executable: str = "redis-server",
    directory: Path | None = None,
    detached: bool = False,
) -> Iterator[SentinelGroup]:
    """A master, ``replicas`` replicas following it and ``sentinels`` sentinels watching it;
    yields once every replica is in sync and every sentinel knows every replica and sentinel.

    ``options`` go to the data nodes. ``username``/``password`` is their login (see
    ``running_redis``), also used by the replicas and sentinels to reach the master;
    ``sentinel_password`` is the sentinels' own. ``down_after_ms`` and ``failover_timeout_ms`` are
    the sentinels' settings of the same names (short here, so a failover is quick).
    """
    login = account_options(username, password)
    follow = ["--repl-diskless-sync-delay", "0"]  # a replica syncs at once, not after 5 s
    if password is not None:
        follow += ["--masterauth", password]
        if username is not None:
            follow += ["--masteruser", username]
    credentials = {"username": username, "password": password}
    with servers(executable, directory, detached=detached) as started:
        master = started.start("master", *login, *follow, *options, **credentials)
        replica_of = ("--replicaof", HOST, str(master.port))
        following = [
            started.start(f"replica{n}", *login, *follow, *options, *replica_of, **credentials)
            for n in range(replicas)
        ]
        config = _sentinel_config(
            master_name,
            master.port,
            sentinels // 2 + 1,
            username,
            password,
            sentinel_password,
            (down_after_ms, failover_timeout_ms),
        )
        watching = [
            started.start(f"sentinel{n}", "--sentinel", config=config, password=sentinel_password)
            for n in range(sentinels)
        ]
        group = SentinelGroup(master_name, master, following, watching)
        _settle("the replicas to be in sync and the sentinels to see them", _sentinel_ready(group))
        yield group


def _sentinel_ready(group: SentinelGroup) -> Callable[[], bool]:
    """A check: every replica in sync with the master, and every sentinel aware of every replica
    (up) and of every other sentinel."""
    replica_ports = {replica.port for replica in group.replicas}

    def in_sync(replica: RedisNode) -> bool:
        with replica.client() as client:
            return bool(client.info("replication")["master_link_status"] == "up")

    def aware(sentinel: RedisNode) -> bool:
        with sentinel.client() as client:
            known = client.sentinel_slaves(group.master_name)
            peers = client.sentinel_sentinels(group.master_name)
        up = {int(r["port"]) for r in known if not r["is_sdown"]}
        return up >= replica_ports and len(peers) == len(group.sentinels) - 1

    return lambda: all(map(in_sync, group.replicas)) and all(map(aware, group.sentinels))


@contextlib.contextmanager
def running_cluster(
    *options: str,
    masters: int = MIN_CLUSTER_MASTERS,
    node_timeout_ms: int = 2000,
    executable: str = "redis-server",
    cli: str = "redis-cli",
    directory: Path | None = None,
    detached: bool = False,
) -> Iterator[ClusterGroup]:
    """A Redis Cluster of ``masters`` masters (no replicas) sharing the 16,384 slots; yields once
    every node reports the cluster ok. ``options`` go to every node."""
    if masters < MIN_CLUSTER_MASTERS:
        raise ValueError(f"a cluster needs at least {MIN_CLUSTER_MASTERS} masters")
    cli = find_executable(cli)
    with servers(executable, directory, detached=detached) as started:
        clustered = ("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf")
        timeout = ("--cluster-node-timeout", str(node_timeout_ms))
        # The bus defaults to port + 10000, which may be taken (or above 65535).
        nodes = [
            started.start(
                f"node{n}", *clustered, *timeout, "--cluster-port", str(free_port()), *options
            )
            for n in range(masters)
        ]
        _create_cluster(cli, nodes)
        group = ClusterGroup(nodes)
        _settle("the cluster to be ok on every node", _cluster_ready(group))
        yield group


def _create_cluster(cli: str, nodes: Sequence[RedisNode]) -> None:
    command = [
        cli, "--cluster", "create", *(f"{HOST}:{node.port}" for node in nodes),
        "--cluster-replicas", "0", "--cluster-yes",
    ]  # fmt: skip
    try:
        subprocess.run(command, check=True, capture_output=True, timeout=60)
    except subprocess.CalledProcessError as exc:
        output = (exc.stdout + exc.stderr).decode(errors="replace")[-2000:]
        raise LaunchError(f"redis-cli --cluster create failed:\n{output}") from exc
    except subprocess.TimeoutExpired as exc:
        raise LaunchError("redis-cli --cluster create did not finish within 60 s") from exc


def _cluster_ready(group: ClusterGroup) -> Callable[[], bool]:
    """A check: every node knows every other and reports every slot served."""

    def ok(node: RedisNode) -> bool:
        with node.client() as client:
            info = client.cluster("INFO")
        known = int(info["cluster_known_nodes"]) == len(group.nodes)
        return known and info["cluster_state"] == "ok"

    return lambda: all(map(ok, group.nodes))
