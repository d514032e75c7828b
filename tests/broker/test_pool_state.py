"""What the broker leaves in Redis: keys under the pool's hash tag, one readable hash per
session, and never a secret."""

from __future__ import annotations

import asyncio

import pytest
from redis.asyncio import Redis
from redis.crc import key_slot

from broker import NoSessionAvailable, Outcome, PoolKeys, Session


async def exercise(pool, sessions: list[Session]) -> None:
    """Every operation of a pool: sync, renew, each outcome, replays, removal, a refused acquire,
    an expired lease (the pool's lease TTL must be short) and its late release."""
    await pool.sync(sessions)
    kept = await pool.acquire()
    kept = await pool.renew(kept)
    for outcome in Outcome:
        lease = await pool.acquire(exclude=[kept.session_id])
        await pool.release(lease, outcome, latency_ms=30, retry_after_ms=60_000, detail="x")
        await pool.release(lease, outcome)
    await pool.sync(sessions[1:])
    await pool.release(kept, Outcome.SUCCESS)
    with pytest.raises(NoSessionAvailable):
        await pool.acquire(exclude=[s.id for s in sessions])
    forgotten = await pool.acquire()
    await asyncio.sleep(pool.settings.lease_ttl_ms / 1000 + 0.05)
    await pool.acquire()
    assert (await pool.release(forgotten, Outcome.TIMEOUT)).status == "late"


async def all_keys(redis: Redis) -> list[str]:
    return [key async for key in redis.scan_iter(match="*", count=1000)]


async def test_every_key_carries_the_pool_hash_tag(make_pool, redis: Redis) -> None:
    """Every key written is sb:{<pool>}:..., one cluster slot per pool, none shared by pools."""
    for name in ("default", "tenant-b"):
        pool = await make_pool(name=name, lease_ttl_ms=200)
        sessions = [Session(id=f"{name}-{n}", secret=f"secret-{n}") for n in range(12)]
        await exercise(pool, sessions)
    keys = await all_keys(redis)
    assert len(keys) > 10
    by_pool = {
        name: {key for key in keys if key.startswith(f"sb:{{{name}}}:")}
        for name in ("default", "tenant-b")
    }
    assert by_pool["default"] | by_pool["tenant-b"] == set(keys)
    for name, pool_keys in by_pool.items():
        assert PoolKeys(name).session(f"{name}-0") in pool_keys
        assert len({key_slot(key.encode()) for key in pool_keys}) == 1


async def test_session_hash_reads_like_a_status_page(
    make_pool, make_sessions, store_now_ms
) -> None:
    """One HGETALL shows state, cooldown, load, outcomes, last error, last use and health."""
    pool = await make_pool(make_sessions(1))
    held, limited, failed = [await pool.acquire() for _ in range(3)]
    before = await store_now_ms()
    cooled = await pool.release(limited, Outcome.RATE_LIMITED, retry_after_ms=30_000, detail="429")
    await pool.release(failed, Outcome.SERVER, latency_ms=120, detail="503")
    after = await store_now_ms()
    state = await pool.session_state("s0")
    assert state["state"] == "cooling"
    assert state["cooldown_until"] == str(cooled.cooldown_until_ms)
    assert state["in_flight"] == "1"
    assert (state["n_rate_limited"], state["n_server"]) == ("1", "1")
    assert state["last_error"] == "server: 503"
    assert before <= int(state["last_error_at"]) <= after
    assert int(state["last_used"]) <= before
    assert 0.05 <= float(state["health"]) < 1
    await pool.release(held, Outcome.SUCCESS)
    state = await pool.session_state("s0")
    assert (state["in_flight"], state["n_success"], state["state"]) == ("0", "1", "cooling")


async def test_no_secret_reaches_the_store(make_pool, redis: Redis) -> None:
    """No key or value in Redis contains a session's secret."""
    sessions = [Session(id=f"s{n}", secret=f"sk-secret-{n}-zz") for n in range(5)]
    pool = await make_pool(lease_ttl_ms=200)
    await exercise(pool, sessions)
    dump = []
    for key in await all_keys(redis):
        dump.append(key)
        kind = await redis.type(key)
        if kind == "hash":
            dump += [f"{k}={v}" for k, v in (await redis.hgetall(key)).items()]
        elif kind == "zset":
            dump += [member for member, _ in await redis.zrange(key, 0, -1, withscores=True)]
        elif kind == "set":
            dump += list(await redis.smembers(key))
        else:
            dump.append(str(await redis.get(key)))
    text = "\n".join(dump)
    assert "s0" in text
    assert "sk-secret" not in text
