"""The simulated upstream itself: faults, latency, counting, its config file and its process."""

from __future__ import annotations

import asyncio
import random
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import aiohttp
import pytest

from proxy.simulated_upstream import (
    CredentialConfig,
    Faults,
    Latency,
    Limits,
    SimulatedUpstream,
    UpstreamConfig,
)

if TYPE_CHECKING:
    from tests.proxy.conftest import StartUpstream

CHAT = "/v1/chat/completions"


async def call(http: aiohttp.ClientSession, url: str, credential: str) -> int | str:
    headers = {"Authorization": f"Bearer {credential}"}
    try:
        async with http.post(url + CHAT, json={}, headers=headers) as response:
            await response.read()
            return response.status
    except aiohttp.ClientError:
        return "reset"


async def test_faults_per_credential(serve_app: StartUpstream, http: aiohttp.ClientSession) -> None:
    """A revoked credential gets 401, a reset one loses its connection, the others are served;
    every attempt is counted under its credential, resets as "reset"."""
    sim = SimulatedUpstream(
        faults={"revoked": Faults(revoked=True), "broken": Faults(reset_rate=1.0)}, seed=1
    )
    url = await serve_app(sim.app())
    assert await call(http, url, "revoked") == 401
    assert await call(http, url, "broken") == "reset"
    assert await call(http, url, "fine") == 200
    stats = sim.snapshot()
    assert stats["revoked"]["statuses"] == {"401": 1}
    assert stats["broken"]["statuses"] == {"reset": 1}
    assert stats["fine"]["statuses"] == {"200": 1}


async def test_error_bursts_follow_the_clock(
    serve_app: StartUpstream, http: aiohttp.ClientSession
) -> None:
    """With bursts of 0.3 s every 0.6 s, the first 0.3 s answer 503 and the next 0.3 s do not;
    a reset restarts the clock."""
    sim = SimulatedUpstream(faults={"flaky": Faults(burst_every_s=0.6, burst_for_s=0.3)})
    url = await serve_app(sim.app())
    sim.reset()
    assert await call(http, url, "flaky") == 503
    await asyncio.sleep(0.4 - (time.monotonic() - sim.started_at))
    assert await call(http, url, "flaky") == 200
    sim.reset()
    assert await call(http, url, "flaky") == 503
    assert sim.attempts("flaky") == 1  # reset forgot the earlier two


async def test_429_carries_quota_headers_when_asked(
    serve_app: StartUpstream, http: aiohttp.ClientSession
) -> None:
    """Over its rpm a credential gets 429 with Retry-After and, with ratelimit_headers, the
    OpenAI-style remaining/reset headers too."""
    sim = SimulatedUpstream(limits={"k": Limits(rpm=60)}, ratelimit_headers=True)
    url = await serve_app(sim.app())
    assert await call(http, url, "k") == 200
    async with http.post(url + CHAT, json={}, headers={"Authorization": "Bearer k"}) as response:
        assert response.status == 429
        assert response.headers["Retry-After"] == "1"
        assert response.headers["x-ratelimit-remaining-requests"] == "0"


def test_latency_distributions_stay_in_bounds() -> None:
    """Each distribution draws around its ``seconds`` and never beyond ``max_s``."""
    rng = random.Random(7)
    assert Latency("fixed", 0.2).sample(rng) == 0.2
    uniform = [Latency("uniform", 1.0, 0.5).sample(rng) for _ in range(500)]
    assert min(uniform) >= 0.5
    assert max(uniform) <= 1.5
    lognormal = sorted(Latency("lognormal", 0.05, 0.5, max_s=0.3).sample(rng) for _ in range(2001))
    assert 0.04 < lognormal[1000] < 0.06
    assert lognormal[-1] <= 0.3
    exponential = [Latency("exponential", 0.1).sample(rng) for _ in range(2000)]
    assert 0.08 < sum(exponential) / len(exponential) < 0.12


async def test_slow_credential_takes_longer(
    serve_app: StartUpstream, http: aiohttp.ClientSession
) -> None:
    """``extra_latency_s`` slows one credential only."""
    sim = SimulatedUpstream(faults={"slow": Faults(extra_latency_s=0.3)})
    url = await serve_app(sim.app())
    started = time.monotonic()
    assert await call(http, url, "fast") == 200
    fast = time.monotonic() - started
    started = time.monotonic()
    assert await call(http, url, "slow") == 200
    assert time.monotonic() - started >= 0.3 > fast


def test_config_file_round_trips() -> None:
    """An UpstreamConfig written as JSON reads back the same and builds the upstream it says."""
    config = UpstreamConfig(
        credentials={"k": CredentialConfig(rpm=120, burst=2, faults=Faults(error_rate=0.5))},
        latency=Latency("lognormal", 0.05, 0.5),
        ratelimit_headers=True,
        seed=3,
    )
    assert UpstreamConfig.from_json(config.to_json()) == config
    built = config.build()
    assert built.limits == {"k": Limits(rpm=120, burst=2)}
    assert built.faults["k"].error_rate == 0.5
    assert built.ratelimit_headers


async def test_runs_as_its_own_process(
    tmp_path: Path, http: aiohttp.ClientSession, free_port: Callable[[], int]
) -> None:
    """``python -m proxy.simulated_upstream --config`` serves the file's limits and counts."""
    config = tmp_path / "sim.json"
    config.write_bytes(UpstreamConfig(credentials={"k": CredentialConfig(rpm=60)}).to_json())
    port = free_port()
    argv = ["-m", "proxy.simulated_upstream", "--port", str(port), "--config", str(config)]
    process = await asyncio.create_subprocess_exec(
        sys.executable, *argv, stdout=asyncio.subprocess.DEVNULL
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            try:
                async with http.get(url + "/_sim/stats") as response:
                    if response.status == 200:
                        break
            except aiohttp.ClientConnectionError:
                await asyncio.sleep(0.05)
        assert [await call(http, url, "k") for _ in range(2)] == [200, 429]
        async with http.get(url + "/_sim/stats") as response:
            assert (await response.json())["k"]["statuses"] == {"200": 1, "429": 1}
        async with http.post(url + "/_sim/reset") as response:
            assert response.status == 200
        async with http.get(url + "/_sim/stats") as response:
            assert await response.json() == {}
    finally:
        process.terminate()
        assert await asyncio.wait_for(process.wait(), 10) == 0


def test_bad_config_exits_2(tmp_path: Path) -> None:
    """A config file that is not an UpstreamConfig stops the process with status 2."""
    config = tmp_path / "sim.json"
    config.write_text('{"credentials": {"k": {"rpm": "fast"}}}')
    done = subprocess.run(
        [sys.executable, "-m", "proxy.simulated_upstream", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2
    assert "bad --config" in done.stderr


@pytest.mark.parametrize("form", ["seconds", "http-date"])
async def test_retry_after_forms(
    serve_app: StartUpstream, http: aiohttp.ClientSession, form: str
) -> None:
    """Retry-After comes as delta-seconds or as an HTTP-date, as configured."""
    sim = SimulatedUpstream(limits={"k": Limits(rpm=60)}, retry_after_form=form)  # type: ignore[arg-type]
    url = await serve_app(sim.app())
    await call(http, url, "k")
    async with http.post(url + CHAT, json={}, headers={"Authorization": "Bearer k"}) as response:
        value = response.headers["Retry-After"]
    assert value.isdigit() if form == "seconds" else value.endswith("GMT")
