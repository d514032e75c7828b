"""Redis Sentinel: a pool on a Sentinel-managed master survives a failover.

A master, its replica and a sentinel run on free ports, with ACL users and a sentinel password as
a production deployment would have them. Two clients (two replicas of the broker) lease and
release sessions while the sentinel is told to fail over; errors may only happen between the
order and the moment the old master has stepped down (plus the clients' retry time), and the
traffic carries on afterwards on the new master, which holds the scripts' function library (a
replica receives it with the data) and, when it lacks it, gets it on the first call.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import pytest
import redis

from broker import (
    BrokerSettings,
    LeaseError,
    NoSessionAvailable,
    Outcome,
    Pool,
    Session,
    StoreError,
    open_store,
)
from broker.preamble import library_name
from broker.store import Store
from proxy.testing import SentinelGroup, running_sentinel, wait_until

USER, PASSWORD, SENTINEL_PASSWORD = "broker", "broker-pw", "sentinel-pw"
#: After the old master has become a replica: time for every client to notice, reconnect through
#: the sentinel and finish its retries (redis-py's backoff tops out at 1 s per retry).
SETTLE_S = 3.0
#: Traffic kept up after the failover window, which must then run without a single error.
AFTER_S = 1.5
SESSIONS = [Session(id=f"s{n}", secret=f"secret-{n}") for n in range(8)]


@dataclass
class Traffic:
    """What the workers of one client saw, with monotonic timestamps."""

    successes: list[float] = field(default_factory=list)
    errors: list[tuple[float, str]] = field(default_factory=list)


async def drive(pool: Pool, traffic: Traffic, stop: asyncio.Event) -> None:
    while not stop.is_set():
        try:
            lease = await pool.acquire()
            await asyncio.sleep(0.002)
            await pool.release(lease, Outcome.SUCCESS, latency_ms=2)
        except (StoreError, LeaseError, NoSessionAvailable) as exc:
            traffic.errors.append((time.monotonic(), f"{type(exc).__name__}: {exc}"))
            await asyncio.sleep(0.02)
        else:
            traffic.successes.append(time.monotonic())


@pytest.fixture
def group(redis_executable: str, tmp_path: Path) -> Iterator[SentinelGroup]:
    """A master, its replica and a sentinel, with the broker's ACL user on the data nodes (ACLs
    are not replicated, so each node has it) and a password on the sentinel."""
    with running_sentinel(
        username=USER,
        password=PASSWORD,
        sentinel_password=SENTINEL_PASSWORD,
        executable=redis_executable,
        directory=tmp_path,
    ) as started:
        with started.sentinels[0].client() as client:
            # A failed-over master that is still alive keeps taking writes until the sentinel
            # turns it into a replica: after four publish periods of it reporting the wrong role,
            # read by INFO every info period (8 s and 10 s by default; about 2 s here, for speed).
            client.execute_command("SENTINEL DEBUG", "info-period", 500, "publish-period", 500)
        yield started


def libraries(client: redis.Redis) -> list[str]:
    return [entry[entry.index("library_name") + 1] for entry in client.function_list()]


async def test_traffic_continues_across_a_forced_failover(group: SentinelGroup) -> None:
    """Two clients lease and release through SENTINEL FAILOVER: errors only inside the window;
    every operation works on the new master afterwards, also once it has lost the library."""
    master, (replica,), (sentinel,) = group.master, group.replicas, group.sentinels
    settings = BrokerSettings(
        redis_url=f"redis://{USER}:{PASSWORD}@/0",
        redis_sentinels=(sentinel.address,),
        redis_sentinel_master=group.master_name,
        redis_sentinel_password=SENTINEL_PASSWORD,
        lease_ttl_ms=10_000,
    )
    stores: list[Store] = [open_store(settings), open_store(settings)]
    pools = [Pool(store, settings) for store in stores]
    traffic = [Traffic(), Traffic()]
    stop = asyncio.Event()
    try:
        assert await pools[0].sync(SESSIONS) == len(SESSIONS)
        await pools[1].sync(SESSIONS)
        workers = [
            asyncio.create_task(drive(pool, seen, stop))
            for pool, seen in zip(pools, traffic, strict=True)
            for _ in range(4)
        ]
        await asyncio.sleep(1.0)
        assert [seen.errors for seen in traffic] == [[], []]
        with replica.client() as client:
            # Unlike SCRIPT LOAD, a function library reaches the replicas with the data.
            assert libraries(client) == [library_name()]

        ordered = time.monotonic()
        with sentinel.client() as client:
            assert client.sentinel_failover(group.master_name)

        def switched() -> bool:
            with sentinel.client() as client:
                address = client.sentinel_get_master_addr_by_name(group.master_name)
            with master.client() as client:
                stepped_down = client.info("replication")["role"] == "slave"
            return int(address[1]) == replica.port and stepped_down

        complete = partial(wait_until, "the failover to complete", switched, timeout_s=30.0)
        await asyncio.to_thread(complete)
        window_end = time.monotonic() + SETTLE_S
        await asyncio.sleep(SETTLE_S + AFTER_S)
        stop.set()
        await asyncio.gather(*workers)

        for seen in traffic:
            outside = [e for e in seen.errors if not ordered <= e[0] <= window_end]
            assert outside == [], outside
            after = [t for t in seen.successes if t > window_end]
            assert len(after) > 10, "traffic did not carry on after the failover"
        # Every operation on the new master, from both clients, after it lost the library (as
        # one promoted from a copy made before the library was loaded would lack it).
        with replica.client() as client:
            client.function_flush()
        assert await pools[1].sync(SESSIONS) == len(SESSIONS)
        lease = await pools[1].acquire()
        await pools[0].renew(lease)
        assert (await pools[0].release(lease, Outcome.RATE_LIMITED)).status == "released"
        with replica.client() as client:
            assert client.info("replication")["role"] == "master"
            assert libraries(client) == [library_name()]
    finally:
        stop.set()
        for store in stores:
            await store.aclose()


@pytest.mark.parametrize("password", [None, "wrong"], ids=["no-password", "wrong-password"])
async def test_sentinel_password_is_used(group: SentinelGroup, password: str | None) -> None:
    """A sentinel that requires a password refuses a client without the right one: the store
    reports it as a StoreError rather than hanging or reaching some other server."""
    settings = BrokerSettings(
        redis_url=f"redis://{USER}:{PASSWORD}@/0",
        redis_sentinels=tuple(group.sentinel_addresses),
        redis_sentinel_password=password,
    )
    store = open_store(settings)
    try:
        with pytest.raises(StoreError):
            await Pool(store, settings).sync(SESSIONS)
    finally:
        await store.aclose()
