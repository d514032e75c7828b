"""How each mode of the fleet benchmark starts its N proxy processes.

``shared-<strategy>``: this project's replicas (``python -m proxy``), one Redis pool between them.
``naive`` and ``local``: the baselines of ``bench/baselines.py``. ``litellm``: LiteLLM's proxy
from its own virtual environment (``bench/litellm_side.py`` installs it), Redis-backed routing.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bench.processes import REPO, free_port, python
from bench.scenarios import Scenario

LITELLM_VENV = REPO / "bench" / ".litellm-venv"
#: What clients send as their own credential: our proxies drop it, LiteLLM wants its master key.
CLIENT_KEY = "sk-bench-" + secrets.token_hex(16)
SHARED_STRATEGIES = ("health", "round-robin", "random", "lru", "least-busy")
BASELINES = ("naive", "local")
ALL_MODES = tuple(f"shared-{s}" for s in SHARED_STRATEGIES) + BASELINES + ("litellm", "direct")
DEFAULT_MODES = ("shared-health", "shared-round-robin", "naive", "local")


@dataclass(frozen=True)
class Fleet:
    """What a mode's processes need: the scenario, where the upstream and Redis are, a pool name
    of its own, and a directory for its files."""

    scenario: Scenario
    upstream_url: str
    redis_url: str
    pool: str
    workdir: Path
    #: Extra settings for this project's replicas (``--shared-env``), e.g. a breaker timeout.
    shared_env: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Launch:
    name: str
    argv: list[str]
    env: dict[str, str]
    url: str
    ready_url: str


def litellm_available() -> bool:
    return (LITELLM_VENV / "bin" / "litellm").exists()


def _sessions_file(fleet: Fleet) -> Path:
    path = fleet.workdir / f"{fleet.pool}-sessions.json"
    path.write_text(json.dumps(fleet.scenario.sessions_file()))
    return path


def _shared(fleet: Fleet, strategy: str, index: int, sessions: Path) -> Launch:
    port, admin = free_port(), free_port()
    env = {
        "UPSTREAM_URL": fleet.upstream_url,
        "SESSIONS_FILE": str(sessions),
        "REDIS_URL": fleet.redis_url,
        "POOL": fleet.pool,
        "LISTEN": f"127.0.0.1:{port}",
        "ADMIN_LISTEN": f"127.0.0.1:{admin}",
        "SESSION_SELECTION_STRATEGY": strategy,
        "LOG_LEVEL": "warning",
        "SHUTDOWN_GRACE": "2",
        **fleet.shared_env,
    }
    return Launch(
        f"{fleet.pool}-replica{index}",
        [python(), "-m", "proxy"],
        env,
        f"http://127.0.0.1:{port}",
        f"http://127.0.0.1:{admin}/readyz",
    )


def _baseline(fleet: Fleet, mode: str, index: int, sessions: Path) -> Launch:
    port = free_port()
    argv = [python(), "-m", "bench.baselines", "--mode", mode, "--listen", f"127.0.0.1:{port}"]
    argv += ["--upstream", fleet.upstream_url, "--sessions-file", str(sessions)]
    url = f"http://127.0.0.1:{port}"
    return Launch(f"{fleet.pool}-{mode}{index}", argv, {}, url, f"{url}/-/ready")


def litellm_config(fleet: Fleet) -> dict[str, object]:
    """LiteLLM's proxy config: one deployment per session (same model name), rpm per deployment
    when the scenario makes limits known, Redis-backed usage-based routing shared by the
    instances, pre-call checks on, as many retries as our proxies make."""
    scenario = fleet.scenario
    host_port = fleet.redis_url.split("//", 1)[1].split("/", 1)[0]
    host, _, port = host_port.rpartition(":")
    deployments = []
    for s in scenario.sessions:
        params: dict[str, object] = {
            "model": "openai/sim",
            "api_base": f"{fleet.upstream_url}/v1",
            "api_key": s.secret,
        }
        if scenario.rpm_known:
            params["rpm"] = int(s.rpm)
        deployments.append(
            {"model_name": "sim", "litellm_params": params, "model_info": {"id": s.id}}
        )
    retries = min(len(scenario.sessions), 10) - 1
    return {
        "model_list": deployments,
        "router_settings": {
            "routing_strategy": "usage-based-routing-v2",
            "redis_host": host,
            "redis_port": int(port),
            "enable_pre_call_checks": True,
            "num_retries": retries,
        },
        "litellm_settings": {"num_retries": retries},
        "general_settings": {"master_key": CLIENT_KEY},
    }


def _litellm(fleet: Fleet, index: int, config: Path) -> Launch:
    port = free_port()
    argv = [str(LITELLM_VENV / "bin" / "litellm"), "--config", str(config)]
    argv += ["--host", "127.0.0.1", "--port", str(port), "--num_workers", "1"]
    env = {
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",  # no fetch from the internet at start-up
        "LITELLM_LOG": "ERROR",
        "PYTHONPATH": "",
        "VIRTUAL_ENV": str(LITELLM_VENV),
    }
    url = f"http://127.0.0.1:{port}"
    return Launch(f"{fleet.pool}-litellm{index}", argv, env, url, f"{url}/health/liveliness")


def launches(mode: str, fleet: Fleet, replicas: int) -> list[Launch]:
    if mode.startswith("shared-"):
        sessions = _sessions_file(fleet)
        strategy = mode.removeprefix("shared-")
        return [_shared(fleet, strategy, i, sessions) for i in range(replicas)]
    if mode in BASELINES:
        sessions = _sessions_file(fleet)
        return [_baseline(fleet, mode, i, sessions) for i in range(replicas)]
    if mode == "litellm":
        if not litellm_available():
            raise RuntimeError(
                "LiteLLM is not installed; run python -m bench.litellm_side --install"
            )
        config = fleet.workdir / f"{fleet.pool}-litellm.json"  # YAML is a superset of JSON
        config.write_text(json.dumps(litellm_config(fleet), indent=1))
        return [_litellm(fleet, i, config) for i in range(replicas)]
    raise ValueError(f"unknown mode {mode!r}; known: {', '.join(ALL_MODES)}")


def check_modes(modes: Sequence[str]) -> None:
    unknown = [m for m in modes if m not in ALL_MODES]
    if unknown:
        raise ValueError(f"unknown mode(s) {', '.join(unknown)}; known: {', '.join(ALL_MODES)}")
