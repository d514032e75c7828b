"""The key layout is the only source of key names: the scripts touch no key it does not name, no
script builds a key name of its own, and the docs show its table."""

from __future__ import annotations

import asyncio
import contextlib
import re
from pathlib import Path

from redis.asyncio import Redis

from broker import NoSessionAvailable, Outcome, Pool, Session, Ticket
from broker.admin import PoolAdmin
from broker.alerts import AlertRules, check_alerts
from broker.keys import KeyFamily, PoolKeys, layout, lua_name, markdown_table
from broker.preamble import preamble, source
from broker.replies import SyncStep
from broker.snapshot import export_state, import_state

ROOT = Path(__file__).resolve().parents[2]
SESSIONS = [
    Session(id="a", secret="x", rpm=6_000, burst=1, tpm=100_000, priority=1),
    Session(id="b", secret="y", max_concurrency=1),
]


async def _keys(redis: Redis) -> set[str]:
    return {key async for key in redis.scan_iter(count=1000)}


async def _workload(pool: Pool, redis: Redis) -> set[str]:
    """Every operation of the gateway, most of their branches; the keys seen after each step."""
    seen = set[str]()
    gateway = pool.gateway

    async def step() -> None:
        seen.update(await _keys(redis))

    await gateway.sync(
        step=SyncStep.PART,
        replica=pool.claimant,
        claim_ttl_ms=60_000,
        generation="g1",
        sessions=SESSIONS[:1],
        strategy=pool.settings.strategy,
        breaker_threshold=1,
        breaker_timeout_ms=50,
        breaker_timeout_max_ms=50,
        half_open_probes=1,
        cooldown_max_ms=60_000,
        breaker_window=20,
        breaker_min_calls=10,
        breaker_failure_ratio=0.5,
        rate_learning=True,
    )
    await step()  # the claim set a sync in several calls collects into
    await pool.sync(SESSIONS)
    expired = await pool.acquire(exclude=["b"], precharge=10)
    await step()
    await asyncio.sleep(0.15)  # the lease TTL: it expires unreleased
    lease = await pool.acquire(exclude=["a"])
    await pool.renew(lease)
    ticket = Ticket("t1", 5_000)
    with contextlib.suppress(NoSessionAvailable):  # b is busy: the ticket holder queues
        await pool.acquire(exclude=["a"], ticket=ticket)
    await step()
    await pool.leave_queue(ticket)
    await pool.release(lease, Outcome.SERVER)  # opens b's breaker
    await pool.release(expired, Outcome.SUCCESS, units=5, request_kind="k")  # late
    await step()
    await asyncio.sleep(0.1)
    probe = await pool.acquire(exclude=["a"])  # the half-open probe
    await step()
    await pool.release(probe, Outcome.RATE_LIMITED, retry_after_ms=60_000)
    await step()
    await pool.release(await pool.acquire(), Outcome.AUTH, request_kind="k")
    admin = PoolAdmin(pool)
    await admin.census()
    await admin.sessions()
    await admin.set_weight("b", 2.0)
    await admin.reset("b")
    await admin.drain("b")
    await step()
    await admin.enable("b")
    await admin.summary_turn(1, interval_ms=1, every_requests=1, min_gap_ms=1)
    await admin.summary_turn(1, interval_ms=1, every_requests=1, min_gap_ms=1)
    await check_alerts(pool, AlertRules(error_rate=0.1, window_ms=60_000), attempts=30, errors=30)
    await import_state(admin, await export_state(admin))
    await step()
    await pool.keep_claim()
    await pool.leave()
    await step()
    return seen


async def test_every_key_the_scripts_touch_is_named_in_the_layout(make_pool, redis: Redis) -> None:
    """A workload of every operation writes only keys of the layout, and every member of the
    layout (but the pub/sub channel) is written by some operation."""
    pool = await make_pool(
        name="layout",
        lease_ttl_ms=100,
        breaker_threshold=1,
        breaker_timeout_ms=50,
        breaker_timeout_max_ms=50,
    )
    seen = await _workload(pool, redis)
    keys = PoolKeys("layout")
    strangers = sorted(key for key in seen if not keys.owns(key))
    assert strangers == []
    written = set()
    for attribute, spec in layout():
        name = f"{keys.base}:{spec.suffix}"
        if any(k == name or (isinstance(spec, KeyFamily) and k.startswith(name)) for k in seen):
            written.add(attribute)
    assert {a for a, _ in layout()} - written == {"wake_channel"}


def test_the_wake_channel_is_in_the_layout() -> None:
    """The pub/sub channel the scripts publish on is the layout's, read by the wait queue."""
    assert PoolKeys("p").wake_channel == "sb:{p}:wake"
    assert "PUBLISH', wake_channel" in source("acquire")


def _code(lua: str) -> str:
    """Lua without its comments (none of the scripts puts '--' inside a string)."""
    return "\n".join(line.split("--", 1)[0] for line in lua.splitlines())


def test_no_script_builds_a_key_name_of_its_own() -> None:
    """No .lua file reads KEYS or the base name, or spells a key suffix: every key comes from a
    local the loader generates from the layout."""
    suffixes = {spec.suffix.rstrip(":") for _, spec in layout()}
    for path in sorted((ROOT / "lua").glob("*.lua")):
        code = _code(path.read_text(encoding="utf-8"))
        assert "KEYS" not in code, path.name
        assert not re.search(r"\bbase\b", code), path.name
        literals = set(re.findall(r"'([^']*)'", code)) | set(re.findall(r'"([^"]*)"', code))
        spelled = {s for s in literals if s.startswith("sb:")}
        spelled |= {s for s in literals if s.startswith(":") and s.strip(":") in suffixes}
        assert spelled == set(), path.name


def test_the_preamble_names_every_member_of_the_layout() -> None:
    """Each layout member has its Lua local, derived from the pool's base name (KEYS[1], given
    to ``bind``) with its suffix."""
    text = preamble()
    assert text.count("local function bind(name)") == 1
    for attribute, spec in layout():
        assert f"  {lua_name(attribute, spec)} = base .. ':{spec.suffix}'\n" in text


def test_the_docs_show_the_layout() -> None:
    """docs/redis-keys.md holds the table generated from the layout (``markdown_table()``)."""
    doc = (ROOT / "docs" / "redis-keys.md").read_text(encoding="utf-8")
    assert markdown_table() in doc
