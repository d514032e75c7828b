"""Start-up of a real `session-broker serve` process fails fast and clearly: a taken port, an
impossible REDIS_URL, a store that refuses us. One line naming the setting, no traceback, a
non-zero exit within seconds, and nothing written to the store; SIGTERM and SIGINT stop it at
any stage. The operator commands refuse the same REDIS_URLs the same way."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from urllib.parse import urlsplit

import pytest
import redis

from proxy.config.settings import HELP
from tests.proxy.conftest import ACL_PASSWORD

#: Long enough for a loaded machine; a replica that hangs (the bug) never gets there.
EXIT_WITHIN_S = 20.0


def argv(*args: str) -> list[str]:
    command = shutil.which("session-broker")
    return [command, *args] if command else [sys.executable, "-m", "proxy", *args]


def environment(**settings: str) -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if k not in HELP}
    base = {"UPSTREAM_URL": "http://127.0.0.1:1", "SESSIONS": "secret-one,secret-two"}
    return clean | base | settings


def run(*args: str, **settings: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv(*args),
        env=environment(**settings),
        capture_output=True,
        text=True,
        timeout=EXIT_WITHIN_S,
    )


def one_line(stderr: str) -> str:
    """The only line the process wrote, which must not be a traceback's."""
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    return lines[0]


def store_is_empty(url: str) -> bool:
    client = redis.Redis.from_url(url)
    try:
        return client.dbsize() == 0
    finally:
        client.close()


@pytest.fixture
def clean_redis(redis_server: str) -> str:
    """The test Redis, emptied: whatever a replica writes to it shows."""
    client = redis.Redis.from_url(redis_server)
    client.flushall()
    client.close()
    return redis_server


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A port another process listens on."""
    with socket.create_server(("127.0.0.1", 0)) as sock:
        yield sock.getsockname()[1]


@pytest.mark.parametrize("setting", ["LISTEN", "ADMIN_LISTEN"])
def test_a_taken_port_stops_start_up(
    setting: str, taken_port: int, clean_redis: str, free_port: Callable[[], int]
) -> None:
    """LISTEN or ADMIN_LISTEN already in use: exit 1 at once naming the setting and the cause,
    before the replica syncs anything into the store (no claim left behind)."""
    ports = {"LISTEN": f"127.0.0.1:{free_port()}", "ADMIN_LISTEN": f"127.0.0.1:{free_port()}"}
    ports[setting] = f"127.0.0.1:{taken_port}"
    result = run("serve", REDIS_URL=clean_redis, **ports)
    assert result.returncode == 1, result.stderr
    line = one_line(result.stderr)
    assert f"{setting} 127.0.0.1:{taken_port}" in line
    assert "in use" in line
    assert store_is_empty(clean_redis)


IMPOSSIBLE = ["redis://127.0.0.1:abc/0", "redis://127.0.0.1:99999/0", "redis://127.0.0.1/x"]


@pytest.mark.parametrize("command", ["serve", "status"])
@pytest.mark.parametrize("url", IMPOSSIBLE, ids=["port-abc", "port-99999", "database-x"])
def test_an_impossible_redis_url_is_a_configuration_error(command: str, url: str) -> None:
    """A REDIS_URL whose port is not a port or whose database is not a number: exit 2 with one
    line naming REDIS_URL, from serve and from an operator command alike."""
    result = run(command, REDIS_URL=url, LISTEN="127.0.0.1:0", ADMIN_LISTEN="127.0.0.1:0")
    assert result.returncode == 2, result.stderr
    assert "REDIS_URL" in one_line(result.stderr)


def refusing_urls(acl_url: str, redis_server: str) -> dict[str, str]:
    path = urlsplit(redis_server)
    return {
        "no such database": f"redis://{path.hostname}:{path.port}/99",
        "wrong password": acl_url.format(password="not-the-password"),
    }


@pytest.mark.parametrize("case", ["no such database", "wrong password"])
@pytest.mark.parametrize("command", ["serve", "status"])
def test_a_store_that_refuses_us_stops_start_up(
    case: str, command: str, acl_user: str, clean_redis: str, free_port: Callable[[], int]
) -> None:
    """A database the store does not have, or a password it refuses: exit 2 within seconds
    with one line naming REDIS_URL and the cause, instead of starting and staying unready."""
    url = refusing_urls(acl_user, clean_redis)[case]
    started = time.monotonic()
    result = run(
        command,
        REDIS_URL=url,
        LISTEN=f"127.0.0.1:{free_port()}",
        ADMIN_LISTEN=f"127.0.0.1:{free_port()}",
    )
    assert result.returncode == 2, result.stderr
    line = one_line(result.stderr)
    assert "REDIS_URL" in line
    assert ("no such database" if case == "no such database" else "refused the credentials") in (
        line
    )
    assert "not-the-password" not in line
    assert time.monotonic() - started < EXIT_WITHIN_S
    assert store_is_empty(clean_redis)


def test_the_right_password_serves(acl_user: str, clean_redis: str) -> None:
    """The same ACL user with its password passes the start-up check (status answers)."""
    result = run("status", REDIS_URL=acl_user.format(password=ACL_PASSWORD))
    assert result.returncode == 0, result.stderr


@pytest.fixture
def silent_store() -> Iterator[str]:
    """A REDIS_URL whose server accepts connections and never answers."""
    with socket.create_server(("127.0.0.1", 0), backlog=64) as sock:
        yield f"redis://127.0.0.1:{sock.getsockname()[1]}/0"


async def bound(port: int) -> None:
    """Wait until something listens on ``port``."""
    deadline = time.monotonic() + EXIT_WITHIN_S
    while time.monotonic() < deadline:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.05)
            continue
        writer.close()
        await writer.wait_closed()
        return
    pytest.fail(f"nothing listens on {port}")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_a_signal_stops_start_up(
    sig: signal.Signals, silent_store: str, free_port: Callable[[], int]
) -> None:
    """SIGTERM or SIGINT while start-up waits for a store that does not answer: the process
    stops at once, without a traceback."""
    port = free_port()
    process = await asyncio.create_subprocess_exec(
        *argv("serve"),
        env=environment(
            REDIS_URL=silent_store, LISTEN=f"127.0.0.1:{port}", ADMIN_LISTEN="127.0.0.1:0"
        ),
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        await bound(port)  # the ports are bound first; the store check waits now
        process.send_signal(sig)
        assert await asyncio.wait_for(process.wait(), 5) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.stderr is not None
    stderr = (await process.stderr.read()).decode()
    assert "Traceback" not in stderr
    assert "stopped during start-up" in stderr
