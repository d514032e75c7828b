"""One pool over several shards on a Redis Cluster: the busiest node's Redis time per request.

Starts a private cluster of ``--masters`` masters (``proxy.testing.running_cluster``), syncs one
pool of ``--sessions`` sessions spread over 1 shard (the baseline: the whole pool on one node) and
over ``--shards`` shards, and drives each with ``--tasks`` concurrent requests -- a request is one
acquire and one release through the cluster client, what a replica sends per upstream attempt --
alternating the layouts, ``--repeats`` times each. A third layout is the control: as many
separate, unsharded pools as shards, one per node, the sessions and the requests split evenly
among them -- what a perfect spread would cost on the same machine in the same run. Before each
run every node's statistics are reset; after it, each node's Redis time is read two ways, side by
side (docs/benchmarks.md):

* scripts: ``INFO commandstats`` usec of EVALSHA, EVAL and FCALL (a script's own commands are
  inside it), per request;
* CPU: the main thread's CPU time (``INFO cpu``) spent during the run, per request.

The busiest node's figure of each run is the one that caps the fleet. Prints the median and
spread (min-max) of each layout, their ratios to one shard, and the bar: with 3 shards on 3 nodes
the busiest node's Redis CPU per request at most 0.45x that of one shard (the CPU reading:
commandstats swells when cores are shared). Exits 1 if the bar fails.

    python -m bench.shards [--masters 3] [--shards 3] [--sessions 300] [--requests 6000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from broker import BrokerSettings, Outcome, Session, open_pool, open_store
from broker.shard_layout import shard_names
from broker.shards import AnyPool
from proxy.testing import RedisNode, running_cluster

#: The bar: the busiest node's Redis time per request, sharded over unsharded, at most this.
BAR = 0.45
#: Commands whose time is a script's (its own commands run inside it).
SCRIPT_COMMANDS = ("cmdstat_evalsha", "cmdstat_eval", "cmdstat_fcall")


@dataclass(frozen=True, slots=True)
class Run:
    """One measured run: its layout, requests, and each node's Redis time (microseconds)."""

    layout: str
    requests: int
    seconds: float
    script_us: list[float]
    cpu_us: list[float]

    @property
    def busiest_script_us(self) -> float:
        return max(self.script_us) / self.requests

    @property
    def busiest_cpu_us(self) -> float:
        return max(self.cpu_us) / self.requests


def _cpu_s(node: RedisNode) -> float:
    with node.client() as client:
        info: dict[str, Any] = client.info("cpu")
    user = info.get("used_cpu_user_main_thread", info["used_cpu_user"])
    system = info.get("used_cpu_sys_main_thread", info["used_cpu_sys"])
    return float(user) + float(system)


def _script_us(node: RedisNode) -> float:
    with node.client() as client:
        info: dict[str, Any] = client.info("commandstats")
    return sum(float(info[name]["usec"]) for name in SCRIPT_COMMANDS if name in info)


def _reset(node: RedisNode) -> None:
    with node.client() as client:
        client.config_resetstat()


async def _requests(pools: Sequence[AnyPool], count: int, tasks: int) -> None:
    """``count`` requests (acquire + release), ``tasks`` at a time, task ``n`` on pool
    ``n % len(pools)``."""
    left = count

    async def worker(pool: AnyPool) -> None:
        nonlocal left
        while left > 0:
            left -= 1
            lease = await pool.acquire()
            await pool.release(lease, Outcome.SUCCESS, latency_ms=1)

    await asyncio.gather(*(worker(pools[n % len(pools)]) for n in range(tasks)))


async def _run(
    nodes: list[RedisNode], pools: Sequence[AnyPool], *, layout: str, requests: int, tasks: int
) -> Run:
    await _requests(pools, requests // 10, tasks)  # warm: scripts loaded, connections open
    for node in nodes:
        _reset(node)
    cpu_before = [_cpu_s(node) for node in nodes]
    started = time.perf_counter()
    await _requests(pools, requests, tasks)
    seconds = time.perf_counter() - started
    cpu = [(_cpu_s(node) - before) * 1e6 for node, before in zip(nodes, cpu_before, strict=True)]
    return Run(layout, requests, seconds, [_script_us(node) for node in nodes], cpu)


async def measure(nodes: list[RedisNode], args: argparse.Namespace) -> list[Run]:
    sessions = [Session(id=f"s{n}", secret=f"secret-{n}") for n in range(args.sessions)]
    base = BrokerSettings(redis_url=f"redis://127.0.0.1:{nodes[0].port}/0", redis_cluster=True)
    store = open_store(base)
    runs: list[Run] = []
    layouts = _layouts(args.shards)
    try:
        pools: dict[str, list[AnyPool]] = {}
        for name, shards in ((layouts[0], 1), (layouts[1], args.shards)):
            settings = replace(base, pool="bench", shards=shards)
            pools[name] = [open_pool(store, settings)]
            await pools[name][0].sync(sessions)
        # The control: as many separate pools as shards, each on its own node (the shards'
        # own tags), sessions and requests split evenly: what a perfect spread would cost.
        tags = shard_names("control", args.shards)
        pools[layouts[2]] = [open_pool(store, replace(base, pool=tag)) for tag in tags]
        for k, pool in enumerate(pools[layouts[2]]):
            await pool.sync(sessions[k :: args.shards])
        for repeat in range(args.repeats):
            for layout in layouts:
                run = await _run(
                    nodes, pools[layout], layout=layout, requests=args.requests, tasks=args.tasks
                )
                runs.append(run)
                print(
                    f"repeat {repeat + 1} {layout}: {run.requests / run.seconds:,.0f} req/s; "
                    f"per node, scripts us/request "
                    + " ".join(f"{us / run.requests:.1f}" for us in run.script_us)
                    + ", CPU us/request "
                    + " ".join(f"{us / run.requests:.1f}" for us in run.cpu_us),
                    flush=True,
                )
        for group in pools.values():
            for pool in group:
                await pool.leave()
    finally:
        await store.aclose()
    return runs


def _spread(values: list[float], *, digits: int = 1) -> str:
    median, low, high = statistics.median(values), min(values), max(values)
    return f"{median:,.{digits}f} ({low:,.{digits}f}-{high:,.{digits}f})"


def _layouts(shards: int) -> tuple[str, str, str]:
    return ("1 shard", f"{shards} shards", f"{shards} pools (control)")


def report(runs: list[Run], shards: int) -> bool:
    """Print the table and the bar; whether the bar holds (on the CPU reading: commandstats
    swells when cores are shared, docs/benchmarks.md)."""
    layouts = _layouts(shards)
    groups = {layout: [r for r in runs if r.layout == layout] for layout in layouts}
    print("\n| layout | req/s | busiest node, scripts us/request | busiest node, CPU us/request |")
    print("| --- | ---: | ---: | ---: |")
    for layout, group in groups.items():
        rate = _spread([r.requests / r.seconds for r in group], digits=0)
        scripts = _spread([r.busiest_script_us for r in group])
        cpu = _spread([r.busiest_cpu_us for r in group])
        print(f"| {layout} | {rate} | {scripts} | {cpu} |")
    one = groups[layouts[0]]
    ok = True
    for name, field in (("scripts", "busiest_script_us"), ("CPU", "busiest_cpu_us")):
        for layout in layouts[1:]:
            group = groups[layout]
            pairs = [getattr(m, field) / getattr(o, field) for o, m in zip(one, group, strict=True)]
            ratio = statistics.median(getattr(m, field) for m in group) / statistics.median(
                getattr(o, field) for o in one
            )
            verdict = ""
            if layout == layouts[1] and name == "CPU":
                ok = ratio <= BAR
                verdict = f"; bar <= {BAR}x: {'PASS' if ok else 'FAIL'}"
            print(
                f"{name}: {layout} / 1 shard = {ratio:.2f}x (per repeat "
                f"{', '.join(f'{p:.2f}' for p in pairs)}){verdict}"
            )
    return ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.shards", description=__doc__)
    parser.add_argument("--shards", type=int, default=3)
    parser.add_argument("--masters", type=int, default=3, help="cluster masters to start")
    parser.add_argument("--sessions", type=int, default=300)
    parser.add_argument("--requests", type=int, default=6000, help="per run")
    parser.add_argument("--tasks", type=int, default=32, help="concurrent requests")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", help="write the runs to this file")
    args = parser.parse_args(argv)
    with (
        tempfile.TemporaryDirectory(prefix="bench-shards-") as directory,
        running_cluster(masters=args.masters, directory=Path(directory)) as cluster,
    ):
        runs = asyncio.run(measure(cluster.nodes, args))
    ok = report(runs, args.shards)
    if args.json:
        Path(args.json).write_text(json.dumps([asdict(r) for r in runs], indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
