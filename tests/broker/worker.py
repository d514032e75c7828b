"""A replica in another OS process, for the broker's multi-process tests. Not a test module.

``python worker.py race URL TASKS ITERATIONS``: prints ``ready``, waits for a line on stdin (so
that several workers start together), then runs ``race()`` and prints its result as one JSON line.
``python worker.py hold URL TTL_MS COUNT``: leases COUNT sessions, prints their ids as one JSON
line and keeps renewing them until it is killed.
``python worker.py grab URL TASKS``: prints ``ready``, waits for a line on stdin, then TASKS
tasks try one acquire each at once; prints the leases granted (session id, probe) as JSON.
``python worker.py wave URL COUNT``: leases COUNT times, prints ``ready``, waits for a line on
stdin, then releases them all at once as header-less 429s; prints their statuses as JSON.

``race()`` is also imported by the in-process test, so both observe concurrency the same way.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import structlog
from redis.asyncio import Redis

from broker import BrokerSettings, NoSessionAvailable, Outcome, Pool, open_store


def counter_key(session_id: str) -> str:
    """The test's own count of holders of a session, kept apart from the broker's counters."""
    return f"race:holders:{session_id}"


@dataclass
class RaceResult:
    """The most holders of each session seen at once, and how often acquire said busy."""

    max_holders: dict[str, int] = field(default_factory=dict)
    leases: int = 0
    busy: int = 0

    def merge(self, other: RaceResult) -> None:
        for session_id, count in other.max_holders.items():
            self.max_holders[session_id] = max(count, self.max_holders.get(session_id, 0))
        self.leases += other.leases
        self.busy += other.busy


async def _one_task(pool: Pool, counters: Redis, iterations: int, result: RaceResult) -> None:
    done = 0
    while done < iterations:
        try:
            lease = await pool.acquire()
        except NoSessionAvailable:
            result.busy += 1
            await asyncio.sleep(0.001)
            continue
        holders = int(await counters.incr(counter_key(lease.session_id)))
        seen = result.max_holders.get(lease.session_id, 0)
        result.max_holders[lease.session_id] = max(seen, holders)
        await asyncio.sleep(0.002)
        await counters.decr(counter_key(lease.session_id))
        await pool.release(lease, Outcome.SUCCESS, latency_ms=2)
        result.leases += 1
        done += 1


async def race(pools: Sequence[Pool], counters: Redis, tasks: int, iterations: int) -> RaceResult:
    """Run ``tasks`` tasks over ``pools`` (round robin), each taking ``iterations`` leases.

    Each holder INCRs a counter of the session after acquire and DECRs it before release: the
    largest value INCR returned is how many held the session at once.
    """
    result = RaceResult()
    async with asyncio.TaskGroup() as group:
        for number in range(tasks):
            pool = pools[number % len(pools)]
            group.create_task(_one_task(pool, counters, iterations, result))
    return result


async def _race_main(url: str, tasks: int, iterations: int) -> None:
    settings = BrokerSettings(redis_url=url)
    client = open_store(settings)
    try:
        print("ready", flush=True)
        await asyncio.to_thread(sys.stdin.readline)
        result = await race([Pool(client, settings)], client, tasks, iterations)
        print(json.dumps(asdict(result)), flush=True)
    finally:
        await client.aclose()


async def _hold_main(url: str, ttl_ms: int, count: int) -> None:
    settings = BrokerSettings(redis_url=url, lease_ttl_ms=ttl_ms)
    client = open_store(settings)
    pool = Pool(client, settings)
    leases = [await pool.acquire() for _ in range(count)]
    print(json.dumps([lease.session_id for lease in leases]), flush=True)
    while True:
        await asyncio.sleep(ttl_ms / 4000)
        leases = [await pool.renew(lease) for lease in leases]


async def _grab_one(pool: Pool) -> list[object] | None:
    try:
        lease = await pool.acquire()
    except NoSessionAvailable:
        return None
    return [lease.session_id, lease.probe]


async def _grab_main(url: str, tasks: int) -> None:
    settings = BrokerSettings(redis_url=url)
    client = open_store(settings)
    try:
        pool = Pool(client, settings)
        print("ready", flush=True)
        await asyncio.to_thread(sys.stdin.readline)
        grabbed = await asyncio.gather(*(_grab_one(pool) for _ in range(tasks)))
        print(json.dumps([lease for lease in grabbed if lease is not None]), flush=True)
    finally:
        await client.aclose()


async def _wave_main(url: str, count: int) -> None:
    settings = BrokerSettings(redis_url=url)
    client = open_store(settings)
    try:
        pool = Pool(client, settings)
        leases = [await pool.acquire() for _ in range(count)]
        print("ready", flush=True)
        await asyncio.to_thread(sys.stdin.readline)
        released = await asyncio.gather(
            *(pool.release(lease, Outcome.RATE_LIMITED) for lease in leases)
        )
        print(json.dumps([r.status for r in released]), flush=True)
    finally:
        await client.aclose()


def main(argv: Sequence[str]) -> None:
    mode, url, *numbers = argv
    values = [int(number) for number in numbers]
    if mode == "race":
        asyncio.run(_race_main(url, *values))
    elif mode == "hold":
        asyncio.run(_hold_main(url, *values))
    elif mode == "grab":
        asyncio.run(_grab_main(url, *values))
    elif mode == "wave":
        asyncio.run(_wave_main(url, *values))
    else:
        raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    # stdout carries this worker's results; the broker's logs go to stderr.
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))
    main(sys.argv[1:])
