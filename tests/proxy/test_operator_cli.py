"""The operator CLI against a real Redis, as an operator runs it from a laptop: status,
session actions, export and import into a fresh Redis; only REDIS_URL and POOL are needed.
On a terminal they print lines and tables, and JSON when their output goes to a program."""

from __future__ import annotations

import asyncio
import json
import os
import pty
import shutil
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import aiohttp
import redis.asyncio

from broker import Session, Strategy
from proxy.config.settings import HELP
from proxy.testing import SimulatedUpstream
from tests.proxy.conftest import SESSIONS, store_now_ms

if TYPE_CHECKING:
    from tests.proxy.conftest import StartReplica

CHAT = "/v1/chat/completions"
BODY = {"model": "m", "messages": []}


def on_terminal(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` with its standard output on a pseudo-terminal, as an operator would."""
    terminal, child_end = pty.openpty()
    try:
        process = subprocess.Popen(
            argv, env=env, stdout=child_end, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL
        )
    finally:
        os.close(child_end)
    chunks = []
    try:
        while True:
            try:
                chunk = os.read(terminal, 65536)
            except OSError:  # EIO: the process closed the terminal
                break
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(terminal)
    assert process.stderr is not None
    stderr = process.stderr.read().decode()
    process.stderr.close()
    returncode = process.wait(timeout=60)
    stdout = b"".join(chunks).decode().replace("\r\n", "\n")
    return subprocess.CompletedProcess(argv, returncode, stdout, stderr)


async def cli(
    *args: str, env: dict[str, str], terminal: bool = False
) -> subprocess.CompletedProcess[str]:
    command = shutil.which("session-broker")
    argv = [command] if command else [sys.executable, "-m", "proxy"]
    clean = {k: v for k, v in os.environ.items() if k not in HELP}
    if terminal:
        return await asyncio.to_thread(on_terminal, [*argv, *args], clean | env)
    return await asyncio.to_thread(
        subprocess.run,
        [*argv, *args],
        env=clean | env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def no_secrets(*outputs: str) -> None:
    for output in outputs:
        for session in SESSIONS:
            assert session.secret not in output


async def traffic(start_replica: StartReplica, redis_url: str, sim: SimulatedUpstream) -> None:
    """Some history: a 429 on b, a 401 on c, successes on a."""
    replica = await start_replica(
        redis_url=redis_url, session_selection_strategy=Strategy.ROUND_ROBIN
    )
    sim.force("secret-b", 429, {"Retry-After": "120"})
    sim.force("secret-c", 401)
    async with aiohttp.ClientSession() as http:
        for _ in range(4):
            async with http.post(replica.proxy_url + CHAT, json=BODY) as response:
                assert response.status == 200
    for _ in range(100):
        if sim.attempts("secret-c") and (await replica.replica.admin.session("c")).state == (
            "disabled"
        ):
            break
        await asyncio.sleep(0.02)


async def test_status_table_and_json(
    start_replica: StartReplica, shared_redis: str, sim: SimulatedUpstream
) -> None:
    """status shows every session with its state, cooldown, breaker and last error on a
    terminal; JSON the same for programs (piped, or --json). UPSTREAM_URL is neither needed nor
    read (here it is even invalid)."""
    await traffic(start_replica, shared_redis, sim)
    env = {"REDIS_URL": shared_redis, "UPSTREAM_URL": "not a url", "LISTEN": "nonsense"}
    table = await cli("status", env=env, terminal=True)
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].startswith("pool default (round-robin): 3 sessions")
    assert lines[2].split()[:9] == [
        "SESSION", "STATE", "COOLDOWN", "BREAKER", "IN-FLIGHT", "SUCCESS", "LATENCY", "LAST",
        "ERROR",
    ]  # fmt: skip
    rows = {line.split()[0]: line for line in lines[3:]}
    assert set(rows) == {"a", "b", "c"}
    assert "cooling" in rows["b"]
    assert "rate_limited: 429" in rows["b"]
    assert "disabled (auth)" in rows["c"]
    assert "auth: 401" in rows["c"]
    assert table.stderr == ""  # no log line on the terminal
    piped = await cli("status", env=env)
    document = await cli("status", "--json", env=env, terminal=True)
    for result in (piped, document):
        assert result.returncode == 0, result.stderr
        parsed = json.loads(result.stdout)
        states = {s["id"]: s["state"] for s in parsed["sessions"]}
        assert states == {"a": "available", "b": "cooling", "c": "disabled"}
        assert parsed["summary"]["sessions"]["cooling"] == 1
    forced = await cli("status", "--no-json", env=env)
    assert forced.stdout.splitlines()[0].startswith("pool default (round-robin): 3 sessions")
    assert "TIER" not in lines[2]  # one tier, no unit budget: no columns for them
    assert "UNITS" not in lines[2]
    no_secrets(table.stdout, table.stderr, document.stdout, document.stderr)


async def test_status_shows_tiers_and_unit_budgets(
    start_replica: StartReplica, shared_redis: str, sim: SimulatedUpstream
) -> None:
    """In a pool of two tiers with a unit budget, status adds a TIER and a UNITS column, a line
    per tier and the budgets added up; the units an answer reported come off the budget."""
    sessions = [
        Session(id="a", secret="secret-a", priority=1, tpm=60_000),
        Session(id="b", secret="secret-b", priority=1),
        Session(id="c", secret="secret-c"),
    ]
    replica = await start_replica(
        sessions,
        redis_url=shared_redis,
        session_selection_strategy=Strategy.ROUND_ROBIN,
        usage_header="X-Usage-Tokens",
    )
    sim.force("secret-a", 200, {"X-Usage-Tokens": "30000"})
    before_ms = await store_now_ms(shared_redis)
    async with aiohttp.ClientSession() as http:
        for _ in range(2):  # one each for a and b: tier 1 serves while it can
            async with http.post(replica.proxy_url + CHAT, json=BODY) as response:
                assert response.status == 200
    for _ in range(250):
        if (await replica.replica.admin.session("a")).units == 30_000:
            break
        await asyncio.sleep(0.02)
    env = {"REDIS_URL": shared_redis}
    table = await cli("status", env=env, terminal=True)
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[1] == "tier 1: 2/2 available; tier 0: 1/1 available"
    assert lines[2].startswith("units ")
    assert lines[2].endswith("/60,000 tpm (1 session)")
    assert lines[4].split() == [
        "SESSION", "STATE", "TIER", "COOLDOWN", "BREAKER", "IN-FLIGHT", "UNITS", "SUCCESS",
        "LATENCY", "LAST", "ERROR", "WHEN",
    ]  # fmt: skip
    rows = {line.split()[0]: line.split() for line in lines[5:]}
    assert [rows[i][2] for i in "abc"] == ["1", "1", "0"]
    assert rows["a"][7] == "tpm"
    assert rows["a"][6].endswith("/60,000")
    assert [rows[i][6] for i in "bc"] == ["-", "-"]
    document = await cli("status", "--json", env=env)
    after_ms = await store_now_ms(shared_redis)
    parsed = json.loads(document.stdout)
    a = parsed["sessions"][0]
    assert (a["id"], a["priority"], a["tpm"], a["units"]) == ("a", 1, 60_000, 30_000)
    # 30000 units took 30000 x 1.02 ms of a one-minute budget; at most that much has refilled.
    assert a["units_available"] <= (after_ms - before_ms + 60_000 - 30_600) / 1.02
    assert parsed["summary"]["units"]["tpm"] == 60_000
    tiers = [(t["priority"], t["sessions"], t["available"]) for t in parsed["summary"]["tiers"]]
    assert tiers == [(1, 2, 2), (0, 1, 1)]
    no_secrets(table.stdout, table.stderr, document.stdout, document.stderr)


async def test_session_actions(
    start_replica: StartReplica, shared_redis: str, sim: SimulatedUpstream
) -> None:
    """sessions enable|disable|drain|reset|weight ID act on the shared pool at once."""
    await traffic(start_replica, shared_redis, sim)
    env = {"REDIS_URL": shared_redis}

    async def state(*args: str) -> dict[str, object]:
        result = await cli("sessions", *args, "--json", env=env)
        assert result.returncode == 0, result.stderr
        no_secrets(result.stdout, result.stderr)
        parsed: dict[str, object] = json.loads(result.stdout)
        return parsed

    assert (await state("enable", "c"))["state"] == "available"
    disabled = await state("disable", "a", "--reason", "maintenance")
    assert (disabled["state"], disabled["disabled_reason"]) == ("disabled", "maintenance")
    assert (await state("drain", "a"))["state"] == "drained"
    reset = await state("reset", "b")
    assert (reset["state"], reset["cooldown_until_ms"]) == ("available", 0)
    assert (await state("weight", "b", "2.5"))["weight_override"] == 2.5
    assert (await state("weight", "b", "default"))["weight_override"] is None
    table = await cli("sessions", "enable", "a", env=env, terminal=True)
    assert table.returncode == 0
    assert table.stdout.startswith("session a of pool default enabled: back in use\n")
    assert "available" in table.stdout
    drained = await cli("sessions", "drain", "a", env=env, terminal=True)
    assert drained.stdout.startswith("session a of pool default drained: no new leases")
    assert drained.stderr == ""
    unknown = await cli("sessions", "reset", "nope", env=env)
    assert unknown.returncode == 1
    assert "no session 'nope'" in unknown.stderr
    bad = await cli("sessions", "weight", "a", "-3", env=env)
    assert bad.returncode == 2
    assert "WEIGHT" in bad.stderr


async def test_store_settings_are_required_and_checked() -> None:
    """Without REDIS_URL, or with a bad one, the command says so (exit 2), hiding any password."""
    missing = await cli("status", env={})
    assert missing.returncode == 2
    assert "REDIS_URL" in missing.stderr
    bad = await cli("status", env={"REDIS_URL": "http://user:hunter2@host"})
    assert bad.returncode == 2
    assert "REDIS_URL" in bad.stderr
    assert "hunter2" not in bad.stderr


async def test_export_then_import_into_a_fresh_redis_reproduces_status(
    start_replica: StartReplica,
    shared_redis: str,
    fresh_redis: str,
    sim: SimulatedUpstream,
    tmp_path: Path,
) -> None:
    """Health state exported from one Redis and imported into a new one: status there is the
    same, counters, last use, cooldown, disable and all."""
    await traffic(start_replica, shared_redis, sim)
    await cli("sessions", "weight", "a", "3", env={"REDIS_URL": shared_redis})
    exported = tmp_path / "health.json"
    result = await cli("export", "-o", str(exported), env={"REDIS_URL": shared_redis})
    assert result.returncode == 0, result.stderr
    no_secrets(exported.read_text())
    result = await cli("import", str(exported), env={"REDIS_URL": fresh_redis}, terminal=True)
    assert result.returncode == 0, result.stderr
    assert "3 sessions" in result.stdout
    assert result.stderr == ""

    async def status(url: str) -> dict[str, object]:
        result = await cli("status", "--json", env={"REDIS_URL": url})
        assert result.returncode == 0, result.stderr
        parsed: dict[str, object] = json.loads(result.stdout)
        parsed.pop("now_ms")
        parsed["summary"].pop("now_ms")  # type: ignore[attr-defined]
        # How requests reach the pool is the replicas' configuration, recorded when they sync
        # (the fresh Redis has no replica yet), not health state.
        parsed.pop("route")
        return parsed

    assert await status(fresh_redis) == await status(shared_redis)
    garbage = tmp_path / "garbage.json"
    garbage.write_text('{"format": "something else"}')
    result = await cli("import", str(garbage), env={"REDIS_URL": fresh_redis})
    assert result.returncode == 1
    assert "format" in result.stderr


async def test_operator_logs_are_console_lines_telling_a_drain_as_a_drain(
    start_replica: StartReplica, shared_redis: str, sim: SimulatedUpstream
) -> None:
    """With LOG_LEVEL=info an operator command logs to stderr as console lines, not JSON;
    the transition a drain makes is logged as a drain by an operator, not as 'session
    disabled' (the warning a failing credential earns)."""
    await start_replica(redis_url=shared_redis)
    env = {"REDIS_URL": shared_redis, "LOG_LEVEL": "info"}
    drained = await cli("sessions", "drain", "a", env=env, terminal=True)
    assert drained.returncode == 0, drained.stderr
    assert "session drained by an operator" in drained.stderr
    assert "session disabled" not in drained.stderr
    assert not [line for line in drained.stderr.splitlines() if line.startswith("{")]
    disabled = await cli("sessions", "disable", "b", env=env, terminal=True)
    assert "session disabled by an operator" in disabled.stderr
    enabled = await cli("sessions", "enable", "a", env=env | {"LOG_FORMAT": "json"})
    logged = [json.loads(line) for line in enabled.stderr.splitlines()]
    assert {"event": "session enabled by an operator", "to_state": "available"}.items() <= (
        logged[-1].items()
    )


async def test_status_watch_as_json_is_one_document_per_line(
    start_replica: StartReplica, shared_redis: str
) -> None:
    """status --watch SECONDS into a pipe: one JSON document per line, every SECONDS."""
    await start_replica(redis_url=shared_redis)
    command = shutil.which("session-broker")
    argv = [command] if command else [sys.executable, "-m", "proxy"]
    clean = {k: v for k, v in os.environ.items() if k not in HELP}
    process = await asyncio.create_subprocess_exec(
        *argv, "status", "--watch", "0.2", env=clean | {"REDIS_URL": shared_redis},
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert process.stdout is not None
    try:
        lines = [await asyncio.wait_for(process.stdout.readline(), 20) for _ in range(3)]
    finally:
        process.terminate()
        await process.wait()
    for line in lines:
        assert {s["id"] for s in json.loads(line)["sessions"]} == {"a", "b", "c"}


async def test_a_store_failure_is_told_in_an_operators_words(shared_redis: str) -> None:
    """When Redis refuses a read, the message names the command and what was being read (the
    key), not an internal module's name; one line, no traceback."""
    client = redis.asyncio.Redis.from_url(shared_redis)
    await client.set("sb:pools", "not a hash")
    await client.aclose()
    result = await cli("status", env={"REDIS_URL": shared_redis}, terminal=True)
    assert result.returncode == 1
    line = result.stderr.strip()
    assert "\n" not in line
    assert line.startswith("session-broker: status: reading the fleet's list of pools (sb:pools)")
    assert "WRONGTYPE" in line
    assert "registry" not in line
