"""The open-loop load generator and its round-robin client.

Arrivals follow a schedule fixed before the run (``Load.arrivals``), so a slow answer never delays
the next request: latency is measured from the scheduled arrival, and queueing in the client shows
up in it instead of being hidden (no coordinated omission). Each arrival goes to the next replica
in turn; a replica that refuses the connection is marked down and the request goes to the next
one, as a load balancer with passive health checks would do.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import aiohttp

#: Most seconds one client request may take, end to end.
REQUEST_TIMEOUT_S = 30.0
BODY = {"model": "sim", "messages": [{"role": "user", "content": "hi"}]}


@dataclass(slots=True)
class Record:
    """One client request: when it was due (s from the start), how long it took, how it ended
    (an HTTP status, or ``"connect"``, ``"disconnect"``, ``"timeout"``), and on which replica."""

    due_s: float
    latency_s: float = 0.0
    status: int | str = 0
    replica: int = -1
    failovers: int = 0


@dataclass
class RoundRobin:
    """Round-robin over the replicas still up."""

    urls: Sequence[str]
    down: set[int] = field(default_factory=set)
    cursor: int = 0

    def next(self) -> int | None:
        for _ in range(len(self.urls)):
            index = self.cursor % len(self.urls)
            self.cursor += 1
            if index not in self.down:
                return index
        return None


async def _one(
    http: aiohttp.ClientSession, balancer: RoundRobin, record: Record, headers: dict[str, str]
) -> None:
    while True:
        index = balancer.next()
        if index is None:
            record.status = "connect"
            return
        record.replica = index
        try:
            async with http.post(
                balancer.urls[index] + "/v1/chat/completions", json=BODY, headers=headers
            ) as response:
                await response.read()
                record.status = response.status
                return
        except aiohttp.ClientConnectorError:
            balancer.down.add(index)  # refused: the replica is gone; try the next one
            record.failovers += 1
        except (aiohttp.ServerDisconnectedError, aiohttp.ClientPayloadError, aiohttp.ClientOSError):
            record.status = "disconnect"
            return
        except TimeoutError:
            record.status = "timeout"
            return


async def run_load(
    urls: Sequence[str],
    arrivals: Sequence[float],
    *,
    headers: dict[str, str],
    at: Sequence[tuple[float, Callable[[], None]]] = (),
    drain_s: float = REQUEST_TIMEOUT_S,
) -> tuple[list[Record], float]:
    """Send one request per arrival time; run each ``(time, action)`` of ``at`` on time (the
    replica kill). Returns the records and the monotonic start."""
    balancer = RoundRobin(urls)
    records = [Record(due) for due in arrivals]
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
    connector = aiohttp.TCPConnector(limit=0, force_close=False)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as http:
        started = time.monotonic()
        tasks: list[asyncio.Task[None]] = []
        actions = sorted(at, key=lambda pair: pair[0])

        async def timed(record: Record) -> None:
            await _one(http, balancer, record, headers)
            record.latency_s = time.monotonic() - started - record.due_s

        for record in records:
            while actions and actions[0][0] <= record.due_s:
                await _sleep_until(started + actions[0][0])
                actions.pop(0)[1]()
            await _sleep_until(started + record.due_s)
            tasks.append(asyncio.create_task(timed(record)))
        for when, action in actions:
            await _sleep_until(started + when)
            action()
        if tasks:
            await asyncio.wait(tasks, timeout=drain_s)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return records, started


async def _sleep_until(deadline: float) -> None:
    delay = deadline - time.monotonic()
    if delay > 0:
        await asyncio.sleep(delay)
