"""The fleet benchmark: this project against the predecessor's approach (and LiteLLM), side by side.

For every scenario and mode: a simulated upstream process enforcing each credential's limits (and
injecting the scenario's faults), N proxy processes of the mode sharing one Redis, and an open-loop
load generator sending requests on a fixed schedule through a round-robin client for a fixed time.
The upstream counts every attempt per credential, so waste is measured where it happens. Prints a
table, checks the issue's bars, writes ``results.json``, ``table.md`` and PNG plots.

    python -m bench.fleet                          # default scenarios and modes, a few minutes
    python -m bench.fleet --duration 30 --scenarios all --modes all
    python -m bench.fleet --scenarios known --modes shared-health,naive,local,litellm
    python -m bench.fleet --suite learning         # issue 13's bars: about 40 min, 3 modes
    python -m bench.fleet --suite learning --quick # the same, every run a sixth as long: ~8 min

The learning suite (``bench.scenarios.learning_scenarios``) fixes each scenario's sessions,
replicas, duration and settings at issue 13's parameters (``--sessions``, ``--rpm``,
``--multiplier``, ``--replicas`` and ``--duration`` do not apply to it) and runs ``shared-health``,
``naive`` and ``local`` by default, and ``litellm`` when it is installed.

Needs ``redis-server`` on PATH (a private one on a free port, stopped at exit, also on Ctrl-C)
unless ``--redis-url``/``REDIS_URL`` is given; plots need matplotlib (the ``bench`` extra).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import sys
import time
import urllib.request
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType

import redis

from bench import modes as mode_lib
from bench.figures import RunFigures, bars, compute, learning_bars, learning_table, table
from bench.load import run_load
from bench.processes import (
    REPO,
    Processes,
    env_for_children,
    processes,
    start_redis,
    start_upstream,
)
from bench.scenarios import (
    DEFAULT_SCENARIOS,
    Scenario,
    by_name,
    learning_scenarios,
    scenarios,
)
from broker import PoolKeys

#: Seconds between the warm-up requests and the run: every bucket, quota and cooldown of the
#: warm-up is over (at the default 240 rpm a burst of 2 refills in 0.5 s).
SETTLE_S = 1.0
#: ``--quick``: the learning suite with every run (and the times in it) this much as long.
QUICK_SCALE = 1 / 6
LEARNING_MODES = ("shared-health", "naive", "local")


def _get_json(url: str) -> dict[str, dict[str, object]]:
    with urllib.request.urlopen(url, timeout=5) as response:
        data: dict[str, dict[str, object]] = json.loads(response.read())
        return data


def _timeline(upstream_url: str) -> list[dict[str, int]]:
    with urllib.request.urlopen(f"{upstream_url}/_sim/timeline", timeout=5) as response:
        seconds: list[dict[str, int]] = json.loads(response.read())["seconds"]
        return seconds


def _warm_up(urls: Sequence[str], headers: dict[str, str]) -> None:
    """One request per LiteLLM instance: its first one takes about a second (lazy imports and
    clients). Ours and the baselines' first requests cost milliseconds; they get none, so a
    revoked or flaky session meets them in the measured run, not before."""
    body = json.dumps({"model": "sim", "messages": [{"role": "user", "content": "warm-up"}]})
    for url in urls:
        request = urllib.request.Request(
            url + "/v1/chat/completions",
            data=body.encode(),
            headers={**headers, "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                response.read()
        except OSError:
            pass  # a 429 or 401 is an answer too; only the warming matters


def run_one(
    scope: Processes,
    scenario: Scenario,
    mode: str,
    *,
    redis_url: str,
    own_redis: bool,
    replicas: int,
    duration_s: float,
    seed: int,
    shared_env: Mapping[str, str] | None = None,
) -> RunFigures:
    if own_redis:
        redis.Redis.from_url(redis_url).flushall()  # LiteLLM's keys do not carry our pool name
    pool = f"{scenario.name}-{mode}-{uuid.uuid4().hex[:6]}"
    config = scope.workdir / f"{pool}-upstream.json"
    config.write_bytes(scenario.upstream_config(seed).to_json())
    upstream, upstream_url = start_upstream(scope, name=f"{pool}-upstream", config=config)
    env = {**(shared_env or {}), **scenario.shared_env}
    fleet = mode_lib.Fleet(scenario, upstream_url, redis_url, pool, scope.workdir, env)
    launches = mode_lib.launches(mode, fleet, replicas) if mode != "direct" else []
    children = [
        scope.start(
            launch.name,
            launch.argv,
            env={**env_for_children(), **launch.env},
            ready_url=launch.ready_url,
            cwd=REPO,
        )
        for launch in launches
    ]
    try:
        scope.wait_ready([upstream, *children])
        # "direct": the client calls the upstream itself (its key is a credential without
        # limits there): the baseline of the proxy-overhead comparison.
        urls = [launch.url for launch in launches] or [upstream_url]
        headers = {"Authorization": f"Bearer {mode_lib.CLIENT_KEY}"}
        if mode == "litellm":
            _warm_up(urls, headers)
            time.sleep(SETTLE_S)
        # Count only the run: not the warm-up, nor LiteLLM's probes of each deployment at start
        # (one 404 each). Buckets start full again, as they are after SETTLE_S anyway.
        urllib.request.urlopen(
            urllib.request.Request(f"{upstream_url}/_sim/reset", method="POST"), timeout=5
        ).close()
        cpu_before = sum(c.cpu_s() for c in children)
        arrivals = scenario.load.arrivals(scenario.quota_per_s, duration_s, seed)
        cpu_of_killed = [0.0]

        def kill_first() -> None:
            cpu_of_killed[0] = children[0].cpu_s()
            children[0].kill()

        at = []
        if scenario.kill_replica_at is not None:
            at.append((scenario.kill_replica_at * duration_s, kill_first))
        records, _ = asyncio.run(run_load(urls, arrivals, headers=headers, at=at))
        cpu_after = sum(c.cpu_s() for c in children if c.alive()) + cpu_of_killed[0]
        counts = _get_json(f"{upstream_url}/_sim/stats")
        timeline = _timeline(upstream_url)
        broker_state = _broker_state(redis_url, pool, scenario) if mode.startswith("shared") else {}
    finally:
        scope.stop([upstream, *children])
    figures = compute(
        scenario,
        mode,
        replicas=replicas,
        duration_s=duration_s,
        records=records,
        upstream=counts,
        proxy_cpu_s=max(0.0, cpu_after - cpu_before),
        upstream_timeline=timeline,
    )
    figures.broker_state = broker_state
    return figures


#: Fields of each session's hash kept in the results: why a session was or was not used.
BROKER_FIELDS = (
    "state",
    "cooldowns",
    "n_rate_limited",
    "rl_streak",
    "rate_rpm",
    "rate_source",
    "rate_decreases",
    "rate_increases",
    "probe_streak",
    "n_success",
    "n_server",
    "n_network",
    "n_auth",
    "breaker",
    "breaker_trips",
    "disabled_reason",
    "leases_expired",
)


def _broker_state(redis_url: str, pool: str, scenario: Scenario) -> dict[str, dict[str, str]]:
    """The end state of each session in the shared pool (what HGETALL shows an operator)."""
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    keys = PoolKeys(pool)
    state: dict[str, dict[str, str]] = {}
    for s in scenario.sessions:
        fields: dict[str, str] = client.hgetall(keys.session(s.id))  # type: ignore[assignment]
        state[s.id] = {k: fields[k] for k in BROKER_FIELDS if k in fields}
    client.close()
    return state


def _parse_list(value: str, everything: Sequence[str]) -> list[str]:
    return list(everything) if value == "all" else [v.strip() for v in value.split(",") if v]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.fleet",
        description="Fleet benchmark: shared broker vs naive vs local (vs LiteLLM).",
    )
    parser.add_argument(
        "--suite",
        choices=["fleet", "learning"],
        default="fleet",
        help="the fleet benchmark's scenarios, or issue 13's (learning unknown limits)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"learning suite: every run {QUICK_SCALE:.3g} x as long (a smoke run, not a result)",
    )
    parser.add_argument("--scale", type=float, default=None, help="learning suite: run lengths x")
    parser.add_argument(
        "--scenarios", default=None, help="comma-separated, or 'all'; default: the suite's own set"
    )
    parser.add_argument("--modes", default=None, help="comma-separated, or 'all'")
    parser.add_argument("--replicas", type=int, default=3)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of load per run")
    parser.add_argument("--sessions", type=int, default=6, help="sessions in the pool")
    parser.add_argument("--rpm", type=float, default=240.0, help="each session's rpm")
    parser.add_argument("--multiplier", type=float, default=1.5, help="offered load / quota")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--redis-url", default=os.environ.get("REDIS_URL"))
    parser.add_argument("--out", type=Path, default=None, help="default bench/results/<time>")
    parser.add_argument(
        "--shared-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a setting for this project's replicas, e.g. CIRCUIT_BREAKER_TIMEOUT=5 (repeatable)",
    )
    parser.add_argument("--no-plots", action="store_true")
    parser.add_argument("--keep-logs", action="store_true", help="keep process logs in --out")
    args = parser.parse_args(argv)
    if args.suite != "learning" and (args.quick or args.scale is not None):
        parser.error("--quick and --scale apply to --suite learning")
    return args


def _modes_of(scenario: Scenario, modes: Sequence[str]) -> list[str]:
    """The modes a scenario runs: all, or this project's only (it varies one of its settings)."""
    if scenario.shared_only:
        return [m for m in modes if m.startswith("shared-")]
    return list(modes)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    # SIGTERM stops it as Ctrl-C does: children stopped, partial results written. (SIGINT too,
    # also where a shell started it in the background with SIGINT ignored.)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _interrupt)
    learning = args.suite == "learning"
    if learning:
        scale = args.scale or (QUICK_SCALE if args.quick else 1.0)
        all_scenarios = learning_scenarios(scale)
        default_scenarios = "all"
        default_modes = LEARNING_MODES + (("litellm",) if mode_lib.litellm_available() else ())
    else:
        all_scenarios = scenarios(args.sessions, args.rpm, args.multiplier)
        default_scenarios, default_modes = ",".join(DEFAULT_SCENARIOS), mode_lib.DEFAULT_MODES
    names = _parse_list(args.scenarios or default_scenarios, [s.name for s in all_scenarios])
    chosen = by_name(names, all_scenarios)
    modes = _parse_list(args.modes or ",".join(default_modes), mode_lib.ALL_MODES)
    if args.modes == "all":
        modes.remove("direct")
        if not mode_lib.litellm_available():
            modes.remove("litellm")
    mode_lib.check_modes(modes)
    shared_env = dict(item.split("=", 1) for item in args.shared_env)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    out: Path = args.out or REPO / "bench" / "results" / stamp
    out.mkdir(parents=True, exist_ok=True)
    results: list[RunFigures] = []
    started = time.monotonic()
    # The machine may be shared: the load before and after says how much the numbers can be read.
    load_before = os.getloadavg()
    planned = sum((s.duration_s or args.duration) * len(_modes_of(s, modes)) for s in chosen)
    print(
        f"{len(chosen)} scenarios x {len(modes)} modes, {planned / 60:.1f} min of load; "
        f"results in {out}",
        flush=True,
    )
    try:
        with processes(out / "logs" if args.keep_logs else None) as scope:
            own_redis = args.redis_url is None
            redis_url = args.redis_url or start_redis(scope)
            for scenario in chosen:
                for mode in _modes_of(scenario, modes):
                    figures = run_one(
                        scope,
                        scenario,
                        mode,
                        redis_url=redis_url,
                        own_redis=own_redis,
                        replicas=scenario.replicas or args.replicas,
                        duration_s=scenario.duration_s or args.duration,
                        seed=args.seed,
                        shared_env=shared_env,
                    )
                    results.append(figures)
                    print(table([figures]).splitlines()[-1], flush=True)
    except KeyboardInterrupt:
        print("interrupted; every process stopped; partial results follow", file=sys.stderr)
    verdicts = bars(results) + learning_bars(results, chosen)
    report = table(results)
    if learning:
        report += "\n\n" + learning_table(results)
    report += "\n\n```\n" + "\n".join(v.line() for v in verdicts) + "\n```\n"
    print("\n" + report)
    meta = {
        "command": "python -m bench.fleet " + " ".join(argv if argv is not None else sys.argv[1:]),
        "elapsed_s": round(time.monotonic() - started, 1),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "load_average_before": load_before,
        "load_average": os.getloadavg(),
        "args": {k: str(v) for k, v in vars(args).items()},
        "scenarios": {s.name: s.summary for s in chosen},
    }
    (out / "results.json").write_text(
        json.dumps(
            {
                "meta": meta,
                "runs": [asdict(r) for r in results],
                "bars": [asdict(v) for v in verdicts],
            },
            indent=1,
        )
    )
    (out / "table.md").write_text(report)
    if not args.no_plots and results:
        from bench.plots import plot_all

        for path in plot_all(results, out):
            print(f"wrote {path}")
    print(f"wrote {out / 'results.json'} in {meta['elapsed_s']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
