"""Private ``redis-server`` processes for tests and benchmarks: one server (``running_redis``), a
Sentinel group (``running_sentinel``: a master, its replicas and sentinels) or a Cluster
(``running_cluster``: N masters joined by ``redis-cli --cluster create``).

Each is a context manager: it starts the servers on free ports of 127.0.0.1, waits until they
answer (and, for a group, until it has settled), yields their addresses and stops every server
when the block ends, however it ends. Nothing is persisted (no RDB, no AOF); the files a server
does write (its log, the configuration a sentinel or a cluster node rewrites) go to a temporary
folder removed afterwards, or to ``directory`` when given, where they are kept.

Errors::

    LaunchError              a server did not start, or a group did not settle in time
     +-- ExecutableNotFound  redis-server or redis-cli is not on PATH
"""

from __future__ import annotations

import contextlib
import ctypes
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

HOST = "127.0.0.1"
#: How long a started server may take to answer PING.
START_TIMEOUT_S = 10.0
#: How long a group may take to settle: replicas in sync, sentinels aware, cluster slots served.
SETTLE_TIMEOUT_S = 30.0
#: How long a server gets to exit after SIGTERM before SIGKILL.
STOP_TIMEOUT_S = 10.0
#: Ports tried per server: a free port can be taken by another process before the server binds it.
PORT_ATTEMPTS = 3
#: redis-cli refuses to create a cluster of fewer masters.
MIN_CLUSTER_MASTERS = 3
PR_SET_PDEATHSIG = 1  # linux/prctl.h
#: What a server's log says when another process took its port first (then another is tried).
PORT_TAKEN = "Address already in use"


class LaunchError(RuntimeError):
    """A server did not start (the message ends with its log's tail) or a group did not settle."""


class ExecutableNotFound(LaunchError):
    """``redis-server`` or ``redis-cli`` is not on PATH."""


def find_executable(name: str) -> str:
    """The path of ``name`` (a command on PATH, or a path); raises ``ExecutableNotFound``."""
    found = shutil.which(name)
    if found is None:
        raise ExecutableNotFound(f"{name} is not on PATH")
    return found


def free_port() -> int:
    """A TCP port of 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def wait_until(what: str, check: Callable[[], bool], *, timeout_s: float) -> None:
    """Poll ``check`` until it is true (a Redis error counts as not yet); ``TimeoutError``
    naming ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(redis.RedisError):
            if check():
                return
        time.sleep(0.05)
    raise TimeoutError(f"timed out after {timeout_s:g} s waiting for {what}")


def die_with_parent() -> None:
    """Runs in a child before exec (Linux): SIGTERM it when the thread that started it ends, also
    by SIGKILL. Elsewhere a no-op."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass
class RedisNode:
    """One running server; ``username`` and ``password`` are what a client needs to log in."""

    name: str
    port: int
    process: subprocess.Popen[bytes] = field(repr=False)
    log: Path
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    host: str = HOST

    @property
    def address(self) -> tuple[str, int]:
        return self.host, self.port

    @property
    def url(self) -> str:
        """``redis://[user:password@]host:port/0``, credentials included when it has them."""
        login = ""
        if self.password is not None:
            login = f"{quote(self.username or '', safe='')}:{quote(self.password, safe='')}@"
        return f"redis://{login}{self.host}:{self.port}/0"

    def client(self, *, retry: bool = True) -> redis.Redis:
        """A new synchronous client (``decode_responses=True``); close it after use. Without
        ``retry`` a refused connection fails at once (a probe, instead of redis-py's backoff)."""
        client = redis.Redis(
            host=self.host,
            port=self.port,
            username=self.username,
            password=self.password,
            decode_responses=True,
            socket_connect_timeout=1,
            socket_timeout=5,
        )
        if not retry:
            client.set_retry(Retry(NoBackoff(), 0))
        return client

    def log_tail(self, chars: int = 2000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return "(no log)"


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


def _account_options(username: str | None, password: str | None) -> list[str]:
    """A server's login: none, the default user's password, or one ACL user with every right
    (and the default user off), as a production deployment would have it."""
    if password is None:
        return []
    if username is None or username == "default":
        return ["--requirepass", password]
    return [
        "--user", username, "on", f">{password}", "~*", "&*", "+@all",
        "--user", "default", "off",
    ]  # fmt: skip


class _Servers:
    """Starts servers in ``folder`` (one subfolder each); ``stop_all`` ends every one of them."""

    def __init__(self, folder: Path, executable: str, *, detached: bool) -> None:
        self.folder = folder
        self.executable = find_executable(executable)
        self.detached = detached
        self.nodes: list[RedisNode] = []

    def start(
        self,
        name: str,
        *options: str,
        config: str | None = None,
        username: str | None = None,
        password: str | None = None,
    ) -> RedisNode:
        """Start ``redis-server`` with ``options`` (after a config file holding ``config``:
        sentinels need one, they rewrite it); returns once it answers."""
        for _ in range(PORT_ATTEMPTS):
            workdir = self.folder / name
            shutil.rmtree(workdir, ignore_errors=True)  # a previous attempt's files
            workdir.mkdir(parents=True)
            port = free_port()
            log = workdir / "redis.log"
            process = self._spawn(self._command(workdir, port, options, config), log)
            node = RedisNode(name, port, process, log, username, password)
            self.nodes.append(node)
            if self._answers_in_time(node):
                return node
            if PORT_TAKEN not in node.log_tail():
                break
        raise LaunchError(f"{name} did not start; its log ends:\n{node.log_tail()}")

    def _command(
        self, workdir: Path, port: int, options: Sequence[str], config: str | None
    ) -> list[str]:
        command = [self.executable]
        if config is not None:  # a config file comes before the options
            conf = workdir / "redis.conf"
            conf.write_text(config)
            command.append(str(conf))
        return [
            *command,
            "--port", str(port),
            "--bind", HOST,
            "--save", "",
            "--appendonly", "no",
            "--dir", str(workdir),
            "--logfile", str(workdir / "redis.log"),
            *options,
        ]  # fmt: skip

    def _spawn(self, command: list[str], log: Path) -> subprocess.Popen[bytes]:
        # A bad option is reported on stderr before the log file opens: both go to the one file,
        # appended to, as the server appends its own lines.
        with log.open("ab") as output:
            if not self.detached:
                return subprocess.Popen(
                    command, stdin=subprocess.DEVNULL, stdout=output, stderr=output
                )
            return subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=output,
                start_new_session=True,  # a Ctrl-C reaches the program only; it stops the servers
                preexec_fn=die_with_parent,
            )

    @staticmethod
    def _answers_in_time(node: RedisNode) -> bool:
        """True once ``node`` answers as itself (not another server that took the port first);
        False, the process stopped, if it exits first (the port was taken, say)."""
        deadline = time.monotonic() + START_TIMEOUT_S
        while node.process.poll() is None:
            with contextlib.suppress(redis.RedisError), node.client(retry=False) as client:
                if int(client.info("server")["process_id"]) == node.process.pid:
                    return True
            if time.monotonic() > deadline:
                _stop(node.process)
                raise LaunchError(
                    f"{node.name} did not answer within {START_TIMEOUT_S:g} s; "
                    f"its log ends:\n{node.log_tail()}"
                )
            time.sleep(0.05)
        return False

    def stop_all(self) -> None:
        for node in self.nodes:
            if node.process.poll() is None:
                node.process.terminate()
        for node in self.nodes:
            _stop(node.process)


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
    try:
        process.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@contextlib.contextmanager
def _servers(executable: str, directory: Path | None, *, detached: bool) -> Iterator[_Servers]:
    with contextlib.ExitStack() as stack:
        if directory is None:
            directory = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="redis-")))
        servers = _Servers(directory, executable, detached=detached)
        try:
            yield servers
        finally:
            servers.stop_all()


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
    with _servers(executable, directory, detached=detached) as servers:
        login = _account_options(username, password)
        yield servers.start("redis", *login, *options, username=username, password=password)


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
    login = _account_options(username, password)
    follow = ["--repl-diskless-sync-delay", "0"]  # a replica syncs at once, not after 5 s
    if password is not None:
        follow += ["--masterauth", password]
        if username is not None:
            follow += ["--masteruser", username]
    credentials = {"username": username, "password": password}
    with _servers(executable, directory, detached=detached) as servers:
        master = servers.start("master", *login, *follow, *options, **credentials)
        replica_of = ("--replicaof", HOST, str(master.port))
        following = [
            servers.start(f"replica{n}", *login, *follow, *options, *replica_of, **credentials)
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
            servers.start(f"sentinel{n}", "--sentinel", config=config, password=sentinel_password)
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
    with _servers(executable, directory, detached=detached) as servers:
        clustered = ("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf")
        timeout = ("--cluster-node-timeout", str(node_timeout_ms))
        # The bus defaults to port + 10000, which may be taken (or above 65535).
        nodes = [
            servers.start(
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
