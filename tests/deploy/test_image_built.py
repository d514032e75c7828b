"""The container image, built from deploy/Dockerfile and run for real (tests/deploy/container.py
says how, with no Docker engine): a replica started from the image, with the embedded store, in
front of the simulated upstream on the host, answers its probes and proxies a request, as uid
10001; the image holds no compiler and no pip.

Needs podman, buildah and debootstrap, and root; without them the tests skip with a reason,
except in CI (``CI=true``), where they fail. The first run makes the Debian base (minutes); later
runs take it from the cache.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from proxy.testing import free_port
from tests.deploy import container
from tests.deploy.conftest import unavailable

#: The uid the Kubernetes manifests and the Dockerfile run the replica as.
REPLICA_UID = 10001
#: Executables that would mean a toolchain or a package installer in the final image.
FORBIDDEN = ("gcc", "cc", "c++", "g++", "clang", "ld", "make", "pip", "pip3", "pip3.11")
#: The final image's size bar, in bytes (measured: docs/deploy.md).
MAX_IMAGE_BYTES = 190_000_000
SECRET = "sk-image-test-0001"
START_TIMEOUT_S = 60.0

#: The first run makes the base and builds every layer: minutes, not the suite's usual two.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]


@pytest.fixture(scope="module")
def image() -> str:
    """The image, built on the cached Debian base."""
    if missing := container.missing_tools():
        unavailable(
            f"{', '.join(missing)} not installed (apt-get install podman buildah debootstrap)"
        )
    if os.geteuid() != 0:
        unavailable("building and running the image without a daemon needs root here")
    return container.build_image(container.base_image())


@contextmanager
def _running(command: list[str], log: Path, ready_url: str) -> Iterator[subprocess.Popen[bytes]]:
    """``command`` running, its output in ``log``, once ``ready_url`` answers; stopped after."""
    with log.open("w") as output:
        process = subprocess.Popen(
            command, stdout=output, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
        try:
            _wait_for(ready_url, process, log)
            yield process
        finally:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _wait_for(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"{process.args} exited with {process.returncode}:\n{log.read_text()}")
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except (urllib.error.URLError, ConnectionError):
            time.sleep(0.2)
    pytest.fail(f"{url} did not answer within {START_TIMEOUT_S} s:\n{log.read_text()}")


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The simulated upstream, on the host."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "proxy.testing.upstream", "--port", str(port)]
    with _running(command, tmp_path_factory.mktemp("upstream") / "log", f"{url}/_sim/stats"):
        yield url


@dataclass(frozen=True)
class Replica:
    """A running replica: its process (buildah's), its URLs and the image's filesystem."""

    process: subprocess.Popen[bytes]
    proxy: str
    ops: str
    rootfs: Path


@pytest.fixture(scope="module")
def replica(
    image: str, upstream: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Replica]:
    """A replica started from the image by its own entrypoint and command, with the embedded
    store (no REDIS_URL), on free ports of the host's network."""
    config = container.image_config(image)
    command = [*config.entrypoint, *config.cmd]
    proxy_port, ops_port = free_port(), free_port()
    env = {
        "UPSTREAM_URL": upstream,
        "SESSIONS": SECRET,
        "LISTEN": f"127.0.0.1:{proxy_port}",
        "ADMIN_LISTEN": f"127.0.0.1:{ops_port}",
        "LOG_FORMAT": "json",
    }
    log = tmp_path_factory.mktemp("replica") / "log"
    ops = f"http://127.0.0.1:{ops_port}"
    with container.working_container(image) as (name, rootfs):
        run = container.run_command(name, env, command)
        with _running(run, log, f"{ops}/healthz") as process:
            yield Replica(process, f"http://127.0.0.1:{proxy_port}", ops, rootfs)


def test_probes_answer(replica: Replica) -> None:
    """/healthz and /readyz on the ops port answer 200 from outside the container."""
    for probe in ("healthz", "readyz"):
        with urllib.request.urlopen(f"{replica.ops}/{probe}", timeout=5) as answer:
            assert answer.status == 200, probe


def test_a_request_is_proxied_with_the_session(replica: Replica, upstream: str) -> None:
    """A request through the replica reaches the simulated upstream with the session's secret
    injected, and its answer comes back."""
    request = urllib.request.Request(f"{replica.proxy}/echo", data=b"ping", method="POST")
    with urllib.request.urlopen(request, timeout=10) as answer:
        assert answer.status == 200
        seen = json.loads(answer.read())
    assert seen["path"] == "/echo"
    assert seen["body_bytes"] == 4
    assert ["Authorization", f"Bearer {SECRET}"] in seen["headers"]


def _descendants(pid: int) -> list[int]:
    """Every process under ``pid``: the children of each of its threads (buildah, in Go, forks
    from whichever thread runs), and theirs."""
    found = [
        int(child)
        for children in Path(f"/proc/{pid}/task").glob("*/children")
        for child in children.read_text().split()
    ]
    return found + [d for child in found for d in _descendants(child)]


def _status(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return dict(line.split(":\t", 1) for line in lines if ":\t" in line)


def test_replica_runs_as_uid_10001(replica: Replica) -> None:
    """The replica's process (the console script's interpreter, found under the buildah process)
    runs with real and effective uid 10001."""
    servers = [
        pid
        for pid in _descendants(replica.process.pid)
        if b"session-broker" in Path(f"/proc/{pid}/cmdline").read_bytes()
    ]
    assert servers, "no session-broker process under buildah run"
    for pid in servers:
        real, effective, *_ = _status(pid)["Uid"].split()
        assert (int(real), int(effective)) == (REPLICA_UID, REPLICA_UID)


def test_no_compiler_and_no_pip(replica: Replica) -> None:
    """No compiler, linker, make or pip on any PATH folder or in the environment; no pip
    package, and no pip wheel for ensurepip to install."""
    root = replica.rootfs
    path = container.image_config(container.IMAGE).env["PATH"]
    for folder in path.split(":"):
        for name in FORBIDDEN:
            assert not (root / folder.lstrip("/") / name).exists(), f"{folder}/{name}"
    assert not list(root.glob("usr/bin/*-linux-gnu-gcc*"))
    for site in [*root.glob("usr/lib/python3*"), *root.glob("usr/local/lib/python3*"),
                 *root.glob("opt/session-broker/lib/python3*")]:  # fmt: skip
        assert not list(site.rglob("pip/__init__.py")), site
        assert not list(site.rglob("pip-*.whl")), site
    assert not list(root.glob("usr/share/python-wheels/pip-*.whl"))


def test_image_is_lean(image: str) -> None:
    """The final image stays under its size bar (the measured size is printed and documented)."""
    size = container.image_config(image).size_bytes
    print(f"image size: {size / 1e6:.1f} MB")
    assert size < MAX_IMAGE_BYTES
