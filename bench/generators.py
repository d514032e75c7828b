"""The load generators of ``bench.proxy_overhead`` and ``bench.scrape``: closed loop (``wrk``
when on PATH, else Python worker processes with aiohttp) and open loop (``bench.load.run_load``
on a fixed, evenly spaced schedule split over the worker processes). Every request is ``POST
/v1/chat/completions`` with a small JSON body and a client credential the replica replaces.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from bench.load import BODY, run_load

__all__ = ["HEADERS", "PATH", "START_DELAY_S", "WRK_SCRIPT", "Generators", "noop"]

#: Seconds the workers get to start before a synchronised start.
START_DELAY_S = 0.5
PATH = "/v1/chat/completions"
#: The upstream wants a credential; the replica replaces whatever the client sends.
HEADERS = {"Authorization": "Bearer direct-client"}
WRK_SCRIPT = f"""wrk.method = "POST"
wrk.body = '{json.dumps(BODY)}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "{HEADERS["Authorization"]}"
"""


async def _closed(url: str, connections: int, start_at: float, seconds: float) -> Counter[str]:
    """Back-to-back requests on ``connections`` connections from ``start_at`` (wall clock) for
    ``seconds``; counts by status. Requests of the warm-up are the caller's to discard."""
    statuses: Counter[str] = Counter()
    connector = aiohttp.TCPConnector(limit=connections)
    async with aiohttp.ClientSession(connector=connector) as http:
        await asyncio.sleep(max(0.0, start_at - time.time()))
        deadline = time.monotonic() + seconds

        async def loop() -> None:
            while time.monotonic() < deadline:
                try:
                    async with http.post(url, json=BODY, headers=HEADERS) as response:
                        await response.read()
                        statuses[str(response.status)] += 1
                except aiohttp.ClientError as exc:
                    statuses[type(exc).__name__] += 1

        await asyncio.gather(*(loop() for _ in range(connections)))
    return statuses


def closed_worker(url: str, connections: int, start_at: float, seconds: float) -> Counter[str]:
    return asyncio.run(_closed(url, connections, start_at, seconds))


def open_worker(
    base_url: str, arrivals: list[float], start_at: float
) -> list[tuple[float, float, str]]:
    """Requests at ``arrivals`` (s after ``start_at``, wall clock): (due, latency, status)."""
    time.sleep(max(0.0, start_at - time.time()))
    records, _ = asyncio.run(run_load([base_url], arrivals, headers=HEADERS, drain_s=10.0))
    return [(r.due_s, r.latency_s, str(r.status)) for r in records]


def noop() -> None:
    """Started once per worker before measuring, so no window pays for a process start."""


@dataclass
class Generators:
    """Where the load comes from: ``wrk`` (closed loop only) and a pool of Python workers."""

    pool: ProcessPoolExecutor
    workers: int
    use_wrk: bool
    wrk_script: Path

    @property
    def closed_name(self) -> str:
        return "wrk -t1" if self.use_wrk else f"python x{self.workers}"

    def closed(self, url: str, connections: int, seconds: float) -> tuple[Counter[str], float]:
        """Statuses of ``seconds`` of closed-loop load, and the seconds it actually ran."""
        if self.use_wrk:
            return self._wrk(url, connections, seconds)
        per = [
            connections // self.workers + (i < connections % self.workers)
            for i in range(self.workers)
        ]
        start_at = time.time() + START_DELAY_S
        futures = [self.pool.submit(closed_worker, url, n, start_at, seconds) for n in per if n]
        statuses: Counter[str] = Counter()
        for future in futures:
            statuses.update(future.result())
        return statuses, seconds

    def _wrk(self, url: str, connections: int, seconds: float) -> tuple[Counter[str], float]:
        argv = ["wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s", "-s", str(self.wrk_script)]
        out = subprocess.run([*argv, url], capture_output=True, text=True, check=True).stdout
        done = re.search(r"(\d+) requests in ([\d.]+)(m?s)", out)
        if done is None:
            raise RuntimeError(f"unexpected wrk output: {out}")
        ran_s = float(done.group(2)) / (1000 if done.group(3) == "ms" else 1)
        bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
        socket_errors = re.search(r"Socket errors: (.*)", out)
        statuses: Counter[str] = Counter()
        statuses["non-2xx"] = int(bad.group(1)) if bad else 0
        statuses["200"] = int(done.group(1)) - statuses["non-2xx"]
        if socket_errors:
            statuses["socket"] = sum(int(n) for n in re.findall(r"\d+", socket_errors.group(1)))
        return +statuses, ran_s

    def open(self, base_url: str, rate: float, seconds: float) -> list[tuple[float, float, str]]:
        """Open loop at ``rate``, each worker a share of a fixed, evenly spaced schedule."""
        count = round(rate * seconds)
        schedule = [i / rate for i in range(count)]
        start_at = time.time() + START_DELAY_S
        futures = [
            self.pool.submit(open_worker, base_url, schedule[w :: self.workers], start_at)
            for w in range(self.workers)
        ]
        return [record for future in futures for record in future.result()]
