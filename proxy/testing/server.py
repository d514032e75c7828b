"""One private ``redis-server`` process: started on a free port of 127.0.0.1 with nothing
persisted (no RDB, no AOF), awaited until it answers as itself, and stopped. The topologies of
``proxy.testing.redis`` are made of these.

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
#: How long a server gets to exit after SIGTERM before SIGKILL.
STOP_TIMEOUT_S = 10.0
#: Ports tried per server: a free port can be taken by another process before the server binds it.
PORT_ATTEMPTS = 3
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


def account_options(username: str | None, password: str | None) -> list[str]:
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


class Servers:
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
def servers(executable: str, directory: Path | None, *, detached: bool) -> Iterator[Servers]:
    """A ``Servers`` in ``directory`` (else a temporary folder, removed after); every server it
    started is stopped when the block ends."""
    with contextlib.ExitStack() as stack:
        if directory is None:
            directory = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="redis-")))
        started = Servers(directory, executable, detached=detached)
        try:
            yield started
        finally:
            started.stop_all()
