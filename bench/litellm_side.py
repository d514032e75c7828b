"""LiteLLM side by side: install LiteLLM's proxy in its own virtual environment (never a dependency
of this project) and run the fleet benchmark with it as one more mode, plus the proxy overhead of
every mode on an instantly answering upstream.

    python -m bench.litellm_side                 # install if missing, then both comparisons
    python -m bench.litellm_side --install       # only install (bench/.litellm-venv, git-ignored)
    python -m bench.litellm_side --scenarios known,unknown,flaky --duration 20
    python -m bench.litellm_side --suite learning --no-overhead    # issue 13's bars, ~55 min

LiteLLM gets the same credentials and limits as our replicas: one deployment per session under one
model name, ``rpm`` per deployment when the scenario makes limits known, Redis-backed
``usage-based-routing-v2`` with ``redis_host``/``redis_port`` shared by its instances,
``enable_pre_call_checks``, as many retries as our proxies make (``bench/modes.py``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, replace
from datetime import UTC, datetime
from pathlib import Path

from bench import fleet, modes
from bench.figures import RunFigures, table
from bench.processes import REPO, processes, start_redis
from bench.scenarios import Load, Scenario, pool
from proxy.testing import Latency

#: The overhead run: an upstream that answers at once, without limits, at this many requests/s.
#: One LiteLLM process saturates a core at about 30 requests/s here; 10 keeps it below.
OVERHEAD_RATE = 10.0
OVERHEAD_MODES = ("direct", "shared-health", "naive", "litellm")


def install(spec: str) -> None:
    """Create bench/.litellm-venv with this interpreter and pip-install ``spec`` into it."""
    venv = modes.LITELLM_VENV
    if not (venv / "bin" / "python").exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet"]
    subprocess.run([*pip, spec], check=True)
    version = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import importlib.metadata as m;"
         "print(m.version('litellm'))"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip
    print(f"LiteLLM {version} installed in {venv.relative_to(REPO)}")


def overhead_scenario(duration_s: float, rate: float) -> Scenario:
    """No limits that matter, no latency: what is left of the client latency is the proxy's."""
    sessions = pool(6, rpm=6_000_000, burst=1000)
    quota = sum(s.per_s for s in sessions)
    return Scenario(
        "overhead",
        f"instant upstream, no limits, {rate:g} requests/s, Poisson",
        sessions,
        load=Load(multiplier=rate / quota),
        latency=Latency("fixed", 0.0),
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.litellm_side", description=__doc__)
    parser.add_argument("--install", action="store_true", help="only install LiteLLM")
    parser.add_argument("--spec", default="litellm[proxy]", help="what pip installs")
    parser.add_argument("--suite", choices=["fleet", "learning"], default="fleet")
    parser.add_argument("--quick", action="store_true", help="learning suite: a short version")
    parser.add_argument(
        "--scenarios", default=None, help="default: known,unknown (fleet suite), all (learning)"
    )
    parser.add_argument("--modes", default="shared-health,naive,local,litellm")
    parser.add_argument("--replicas", type=int, default=3)
    parser.add_argument("--duration", type=float, default=15.0)
    parser.add_argument("--sessions", type=int, default=6)
    parser.add_argument("--rpm", type=float, default=240.0, help="each session's rpm")
    parser.add_argument("--overhead-duration", type=float, default=10.0)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--no-plots", action="store_true")
    parser.add_argument("--no-overhead", action="store_true")
    parser.add_argument("--overhead-only", action="store_true")
    parser.add_argument("--overhead-rate", type=float, default=OVERHEAD_RATE, help="requests/s")
    args = parser.parse_args(argv)
    if args.install or not modes.litellm_available():
        install(args.spec)
        if args.install:
            return 0
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    out: Path = args.out or REPO / "bench" / "results" / f"litellm-{stamp}"
    scenarios = args.scenarios or ("all" if args.suite == "learning" else "known,unknown")
    fleet_argv = ["--suite", args.suite, "--scenarios", scenarios, "--modes", args.modes]
    fleet_argv += ["--out", str(out)]
    if args.quick:
        fleet_argv.append("--quick")
    fleet_argv += ["--replicas", str(args.replicas), "--duration", str(args.duration)]
    fleet_argv += ["--sessions", str(args.sessions), "--rpm", str(args.rpm)]
    if args.no_plots:
        fleet_argv.append("--no-plots")
    status = 0 if args.overhead_only else fleet.main(fleet_argv)
    if args.no_overhead:
        return status
    rate = args.overhead_rate
    print(
        f"\nproxy overhead: one instance each, {rate:g} requests/s to an instant "
        f"upstream for {args.overhead_duration:g} s",
        flush=True,
    )
    results = overhead(args.overhead_duration, rate, out)
    print(table(results))
    return status


def overhead(duration_s: float, rate: float, out: Path) -> list[RunFigures]:
    scenario = overhead_scenario(duration_s, rate)
    results: list[RunFigures] = []
    with processes() as scope:
        redis_url = start_redis(scope)
        for mode in OVERHEAD_MODES:
            if mode == "litellm" and not modes.litellm_available():
                continue
            figures = fleet.run_one(
                scope, scenario, mode, redis_url=redis_url, own_redis=True, replicas=1,
                duration_s=duration_s, seed=1,
            )  # fmt: skip
            results.append(replace(figures, notes=["1 instance"]))
            print(table([figures]).splitlines()[-1], flush=True)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"written_at": time.time(), "cpus": os.cpu_count(), "scenario": scenario.summary}
    (out / f"overhead-{rate:g}.json").write_text(
        json.dumps({"meta": meta, "runs": [asdict(r) for r in results]}, indent=1)
    )
    return results


if __name__ == "__main__":
    sys.exit(main())
