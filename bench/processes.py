"""Child processes of a benchmark: started on free loopback ports, awaited until ready, and always
stopped, also on Ctrl-C or when the benchmark itself dies (``PR_SET_PDEATHSIG`` on Linux). The ones
the benchmarks share start in one call each: Redis, the simulated upstream, a replica."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

from proxy.testing import ExecutableNotFound, free_port, running_redis
from proxy.testing.server import die_with_parent

#: free_port is the launcher's, named here too: a benchmark takes its process helpers from here.
__all__ = [
    "REPO",
    "Child",
    "Processes",
    "env_for_children",
    "free_port",
    "private_redis",
    "processes",
    "python",
    "serve_until_signalled",
    "start_redis",
    "start_replica",
    "start_upstream",
]

#: The repository: its code is what the children run.
REPO = Path(__file__).resolve().parent.parent
#: How long a process may take to become ready (LiteLLM imports for several seconds).
READY_TIMEOUT_S = 60.0
#: How long a process gets to exit after SIGTERM before SIGKILL.
STOP_TIMEOUT_S = 10.0
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass
class Child:
    """One started process, its log file and the URL that says it is ready."""

    name: str
    process: subprocess.Popen[bytes]
    log: Path
    ready_url: str | None = None

    def alive(self) -> bool:
        return self.process.poll() is None

    def cpu_s(self) -> float:
        """CPU seconds (user + system) the live process has used, from /proc; 0 if unreadable."""
        try:
            stat = Path(f"/proc/{self.process.pid}/stat").read_text()
        except OSError:
            return 0.0
        fields = stat.rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS

    def log_tail(self, chars: int = 2000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return "(no log)"

    def kill(self) -> None:
        """SIGKILL: a crash, for the replica-killed scenario."""
        if self.alive():
            self.process.kill()
            self.process.wait()

    def stop(self) -> None:
        if self.alive():
            self.process.terminate()
        try:
            self.process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@dataclass
class Processes:
    """Every child started for one benchmark; ``stop_all`` ends them in reverse order, then
    closes ``resources`` (servers started before the children, such as Redis)."""

    workdir: Path
    children: list[Child] = field(default_factory=list)
    resources: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)

    def start(
        self,
        name: str,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        ready_url: str | None = None,
        cwd: Path | None = None,
    ) -> Child:
        log = self.workdir / f"{name}.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, **(env or {})},
                cwd=cwd,
                start_new_session=True,  # Ctrl-C reaches us only; we stop the children in order
                preexec_fn=die_with_parent,
            )
        child = Child(name, process, log, ready_url)
        self.children.append(child)
        return child

    def wait_ready(self, children: Sequence[Child], timeout_s: float = READY_TIMEOUT_S) -> None:
        """Wait until every child's ready URL answers 200; raise with its log if it dies."""
        deadline = time.monotonic() + timeout_s
        pending = [c for c in children if c.ready_url]
        while pending:
            for child in list(pending):
                if not child.alive():
                    raise RuntimeError(f"{child.name} exited early; its log:\n{child.log_tail()}")
                if _answers(child.ready_url or ""):
                    pending.remove(child)
            if pending and time.monotonic() > deadline:
                names = ", ".join(c.name for c in pending)
                raise RuntimeError(f"not ready after {timeout_s:g} s: {names}")
            if pending:
                time.sleep(0.05)

    def stop(self, children: Sequence[Child]) -> None:
        for child in reversed(children):
            child.stop()
            if child in self.children:
                self.children.remove(child)

    def stop_all(self) -> None:
        self.stop(list(self.children))
        self.resources.close()


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1.0) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


@contextlib.contextmanager
def processes(keep: Path | None = None) -> Iterator[Processes]:
    """A scope for children: all are stopped when it ends, however it ends. Logs go to a
    temporary directory, or to ``keep`` when given (and are kept)."""
    if keep is not None:
        keep.mkdir(parents=True, exist_ok=True)
        scope = Processes(keep)
        try:
            yield scope
        finally:
            scope.stop_all()
        return
    with tempfile.TemporaryDirectory(prefix="bench-fleet-") as workdir:
        scope = Processes(Path(workdir))
        try:
            yield scope
        finally:
            scope.stop_all()


@contextlib.contextmanager
def private_redis(executable: str = "redis-server", directory: Path | None = None) -> Iterator[str]:
    """A private redis-server (no persistence) on a free port for the duration of the block, in
    its own session and dying with the benchmark (``proxy.testing.running_redis``); its URL."""
    with contextlib.ExitStack() as stack:
        try:
            server = running_redis(executable=executable, directory=directory, detached=True)
            node = stack.enter_context(server)
        except ExecutableNotFound as exc:
            raise ExecutableNotFound(f"{exc}; install Redis or pass --redis-url") from exc
        yield node.url


def start_redis(scope: Processes) -> str:
    """A private redis-server stopped with ``scope``, after its children; returns its URL."""
    return scope.resources.enter_context(private_redis(directory=scope.workdir))


def python() -> str:
    """The interpreter running the benchmark: its children use the same environment."""
    return sys.executable


def env_for_children() -> dict[str, str]:
    """The repository on PYTHONPATH, so ``python -m bench.baselines`` works from anywhere."""
    path = os.environ.get("PYTHONPATH", "")
    return {"PYTHONPATH": f"{REPO}{os.pathsep}{path}" if path else str(REPO)}


def start_upstream(
    scope: Processes, *, name: str = "upstream", config: Path | None = None
) -> tuple[Child, str]:
    """The simulated upstream (``python -m proxy.testing.upstream``) on a free port, serving the
    ``UpstreamConfig`` file ``config`` when given; the child (not awaited: pass it to
    ``wait_ready``) and its URL."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    argv = [python(), "-m", "proxy.testing.upstream", "--port", str(port)]
    if config is not None:
        argv += ["--config", str(config)]
    return scope.start(name, argv, env=env_for_children(), ready_url=f"{url}/_sim/stats"), url


def start_replica(scope: Processes, env: Mapping[str, str]) -> tuple[Child, int, int]:
    """One replica (``python -m proxy``) listening on free loopback ports, set up by ``env`` (its
    Redis, upstream and sessions); the child (not awaited: pass it to ``wait_ready``), its port
    and its ops port."""
    port, admin = free_port(), free_port()
    settings = {
        **env_for_children(),
        **env,
        "LISTEN": f"127.0.0.1:{port}",
        "ADMIN_LISTEN": f"127.0.0.1:{admin}",
    }
    ready_url = f"http://127.0.0.1:{admin}/readyz"
    child = scope.start("replica", [python(), "-m", "proxy"], env=settings, ready_url=ready_url)
    return child, port, admin


async def serve_until_signalled(app: web.Application, host: str, port: int) -> None:
    """Serve ``app`` on ``host:port`` until SIGTERM or SIGINT: the body of a server process a
    run starts (a baseline proxy, the bare pass-through)."""
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    await stopping.wait()
    await runner.cleanup()
