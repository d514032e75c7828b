"""The simulated upstream itself: faults, latency, counting, its config file and its process."""

from __future__ import annotations

import asyncio
import json
import math
import random
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import aiohttp
import pytest

from proxy.request.usage import UsageMeter
from proxy.testing import (
    CredentialConfig,
    Faults,
    Latency,
    Limits,
    SimulatedUpstream,
    UpstreamConfig,
)
from tests.proxy.conftest import wait_ready

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


async def test_fixed_window_admits_its_count_then_starts_over(
    serve_app: StartUpstream, http: aiohttp.ClientSession
) -> None:
    """A fixed window of rpm x window/60 requests admits that many at any pace, then answers 429
    with Retry-After and remaining 0 until its edge, where the count starts over."""
    limits = Limits(rpm=120, shape="window", window_s=1.0)  # 2 a second
    sim = SimulatedUpstream(limits={"k": limits}, ratelimit_headers=True)
    url = await serve_app(sim.app())
    sim.reset()
    assert [await call(http, url, "k") for _ in range(3)] == [200, 200, 429]
    async with http.post(url + CHAT, json={}, headers={"Authorization": "Bearer k"}) as response:
        assert response.status == 429
        assert response.headers["Retry-After"] == "1"
        assert response.headers["x-ratelimit-limit-requests"] == "120"
        assert response.headers["x-ratelimit-remaining-requests"] == "0"
        assert 0 < float(response.headers["x-ratelimit-reset-requests"].removesuffix("s")) <= 1
    await asyncio.sleep(1.02 - (time.monotonic() - sim.started_at))
    assert [await call(http, url, "k") for _ in range(3)] == [200, 200, 429]
    assert sim.snapshot()["k"]["limited"] == {"concurrency": 0, "rpm": 3, "tpm": 0}


async def test_schedule_changes_the_limit_in_force(
    serve_app: StartUpstream, http: aiohttp.ClientSession
) -> None:
    """A schedule scales the rpm from its times on: a window admits half as many while the
    factor is 0.5, as many as before once it is back to 1, and the headers state the rpm in
    force."""
    limits = Limits(rpm=240, shape="window", window_s=1.0, schedule=((1.0, 0.5), (2.0, 1.0)))
    assert [limits.per_window(at) for at in (0.0, 1.0, 2.0)] == [4, 2, 4]
    sim = SimulatedUpstream(limits={"k": limits}, ratelimit_headers=True)
    url = await serve_app(sim.app())

    async def window_at(start_s: float) -> list[int | str]:
        await asyncio.sleep(max(0.0, start_s + 0.02 - (time.monotonic() - sim.started_at)))
        return [await call(http, url, "k") for _ in range(5)]

    sim.reset()
    assert await window_at(0.0) == [200] * 4 + [429]
    assert await window_at(1.0) == [200] * 2 + [429] * 3
    async with http.post(url + CHAT, json={}, headers={"Authorization": "Bearer k"}) as response:
        assert response.headers["x-ratelimit-limit-requests"] == "120"
    assert await window_at(2.0) == [200] * 4 + [429]


async def test_schedule_changes_a_bucket_rate(
    serve_app: StartUpstream, http: aiohttp.ClientSession
) -> None:
    """A bucket refills at the scheduled rate: at factor 0 nothing more is admitted."""
    limits = Limits(rpm=6000, burst=1, schedule=((0.3, 0.0),))
    sim = SimulatedUpstream(limits={"k": limits})
    url = await serve_app(sim.app())
    sim.reset()
    assert await call(http, url, "k") == 200
    await asyncio.sleep(0.05)  # 100 a second: refilled
    assert await call(http, url, "k") == 200
    await asyncio.sleep(0.35 - (time.monotonic() - sim.started_at))
    assert await call(http, url, "k") == 429


async def test_headerless_429_has_no_header_at_all(
    serve_app: StartUpstream, http: aiohttp.ClientSession
) -> None:
    """With headerless_429 a refusal carries neither Retry-After nor retry-after-ms nor any
    rate-limit header, for either limit shape; admitted answers keep their rate-limit headers."""
    sim = SimulatedUpstream(
        limits={"b": Limits(rpm=60), "w": Limits(rpm=60, shape="window", window_s=1)},
        ratelimit_headers=True,
        retry_after_ms=True,
        headerless_429=True,
    )
    url = await serve_app(sim.app())
    for credential in ("b", "w"):
        headers = {"Authorization": f"Bearer {credential}"}
        async with http.post(url + CHAT, json={}, headers=headers) as admitted:
            assert admitted.status == 200
            assert admitted.headers["x-ratelimit-limit-requests"] == "60"
        async with http.post(url + CHAT, json={}, headers=headers) as refused:
            assert refused.status == 429
            named = {name.lower() for name in refused.headers}
            assert "retry-after" not in named
            assert "retry-after-ms" not in named
            assert not [name for name in named if "ratelimit" in name]


async def test_timeline_counts_answers_per_second(
    serve_app: StartUpstream, http: aiohttp.ClientSession
) -> None:
    """The timeline counts every credential's answers in the second since the start they came
    in, over HTTP too; a reset empties it."""
    sim = SimulatedUpstream(limits={"k": Limits(rpm=60)})
    url = await serve_app(sim.app())
    sim.reset()
    assert [await call(http, url, "k") for _ in range(2)] == [200, 429]
    assert await call(http, url, "other") == 200
    await asyncio.sleep(1.05 - (time.monotonic() - sim.started_at))
    assert await call(http, url, "other") == 200
    assert sim.timeline_snapshot() == [{"200": 2, "429": 1}, {"200": 1}]
    async with http.get(url + "/_sim/timeline") as response:
        assert await response.json() == {"seconds": [{"200": 2, "429": 1}, {"200": 1}]}
    sim.reset()
    assert sim.timeline_snapshot() == []


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
    window = CredentialConfig(rpm=60, shape="window", window_s=10, schedule=((60, 0.5),))
    config = UpstreamConfig(
        credentials={
            "k": CredentialConfig(rpm=120, burst=2, faults=Faults(error_rate=0.5)),
            "w": window,
        },
        latency=Latency("lognormal", 0.05, 0.5),
        ratelimit_headers=True,
        headerless_429=True,
        seed=3,
    )
    assert UpstreamConfig.from_json(config.to_json()) == config
    built = config.build()
    assert built.limits == {
        "k": Limits(rpm=120, burst=2),
        "w": Limits(rpm=60, shape="window", window_s=10, schedule=((60, 0.5),)),
    }
    assert built.faults["k"].error_rate == 0.5
    assert built.ratelimit_headers
    assert built.headerless_429


def test_config_file_takes_a_tpm() -> None:
    """A credential's tpm (and the completion tokens reported) can be written in the file."""
    text = '{"credentials": {"k": {"rpm": 60, "tpm": 40000}}, "completion_units": 8}'
    built = UpstreamConfig.from_json(text).build()
    assert built.limits == {"k": Limits(rpm=60, tpm=40000)}
    assert built.completion_units == 8
    config = UpstreamConfig(credentials={"k": CredentialConfig(tpm=1000)})
    assert UpstreamConfig.from_json(config.to_json()) == config


async def test_runs_as_its_own_process(
    tmp_path: Path, http: aiohttp.ClientSession, free_port: Callable[[], int]
) -> None:
    """``python -m proxy.testing.upstream --config`` serves the file's limits and counts."""
    config = tmp_path / "sim.json"
    config.write_bytes(UpstreamConfig(credentials={"k": CredentialConfig(rpm=60)}).to_json())
    port = free_port()
    argv = ["-m", "proxy.testing.upstream", "--port", str(port), "--config", str(config)]
    process = await asyncio.create_subprocess_exec(
        sys.executable, *argv, stdout=asyncio.subprocess.DEVNULL
    )
    url = f"http://127.0.0.1:{port}"
    try:
        await wait_ready(http, url + "/_sim/stats", process)
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
        [sys.executable, "-m", "proxy.testing.upstream", "--config", str(config)],
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


# -- tpm: units (tokens) a minute ----------------------------------------------------------------


def chat_body(prompt_units: int, max_tokens: int | None = None, *, stream: bool = False) -> bytes:
    """A chat completion request of exactly ``prompt_units`` x 4 bytes."""
    fields = {"max_tokens": max_tokens} if max_tokens is not None else {}
    head = json.dumps({**fields, "stream": stream, "pad": ""}).encode()[:-2]
    return head + b"x" * (4 * prompt_units - len(head) - 2) + b'"}'


async def chat(
    http: aiohttp.ClientSession, url: str, body: bytes, credential: str = "k"
) -> aiohttp.ClientResponse:
    """POST ``body`` to the chat route and read the answer (kept on the returned response)."""
    headers = {"Authorization": f"Bearer {credential}", "Content-Type": "application/json"}
    async with http.post(url + CHAT, data=body, headers=headers) as response:
        await response.read()
        return response


def test_chat_body_has_the_size_asked() -> None:
    """The helper's bodies are the size the tests count on, and still JSON."""
    body = chat_body(50, 200)
    assert len(body) == 200
    assert json.loads(body)["max_tokens"] == 200


async def test_tpm_admits_a_minute_of_units_then_429s(
    serve_app: StartUpstream, http: aiohttp.ClientSession
) -> None:
    """Requests are admitted while the unit schedule is at most a minute ahead, each charged its
    estimate at once; then 429 for tokens, with Retry-After until the schedule is back within
    the minute and the OpenAI token headers; counted apart from other 429s."""
    sim = SimulatedUpstream(
        limits={"k": Limits(tpm=600)}, ratelimit_headers=True, retry_after_ms=True
    )
    url = await serve_app(sim.app())
    body = chat_body(50, 200)  # 250 units: 25 s of a 600 tpm schedule
    began = time.monotonic()
    first = await chat(http, url, body)
    assert first.status == 200
    assert first.headers["x-ratelimit-limit-tokens"] == "600"
    assert 350 <= int(first.headers["x-ratelimit-remaining-tokens"]) <= 400  # 35 s of 60 left
    assert 20 < float(first.headers["x-ratelimit-reset-tokens"].removesuffix("s")) <= 25
    # 25 s and 50 s ahead are within the minute: admitted; 75 s ahead is not.
    assert [(await chat(http, url, body)).status for _ in range(2)] == [200, 200]
    limited = await chat(http, url, body)
    took_s = time.monotonic() - began
    assert limited.status == 429
    assert "rate limit (tpm) exceeded" in (await limited.json())["error"]["message"]
    # 75 s ahead, 15 s over the minute, less the little time these requests took.
    assert math.floor(15 - took_s) <= int(limited.headers["Retry-After"]) <= 15
    assert 15_000 - 1000 * took_s <= int(limited.headers["retry-after-ms"]) <= 15_000
    assert limited.headers["x-ratelimit-remaining-tokens"] == "0"
    stats = sim.snapshot()["k"]
    assert stats["statuses"] == {"200": 3, "429": 1}
    assert stats["limited"] == {"concurrency": 0, "rpm": 0, "tpm": 1}
    assert stats["units"] == 3 * 250


async def test_chat_reports_prompt_plus_max_tokens(
    serve_app: StartUpstream, http: aiohttp.ClientSession
) -> None:
    """A chat completion reports the body's bytes / 4 as prompt tokens and its max_tokens (else
    16) as completion tokens, under no limit too; the stats add them up."""
    sim = SimulatedUpstream()
    url = await serve_app(sim.app())
    answer = await (await chat(http, url, chat_body(50, 200))).json()
    assert answer["usage"] == {"prompt_tokens": 50, "completion_tokens": 200, "total_tokens": 250}
    answer = await (await chat(http, url, chat_body(30))).json()
    assert answer["usage"] == {"prompt_tokens": 30, "completion_tokens": 16, "total_tokens": 46}
    assert sim.snapshot()["k"]["units"] == 250 + 46


async def test_stream_reports_usage_last(
    serve_app: StartUpstream, http: aiohttp.ClientSession
) -> None:
    """A streamed chat completion carries its usage in the last event before [DONE], where the
    proxy's usage meter finds it, and the token headers as it starts."""
    sim = SimulatedUpstream(limits={"k": Limits(tpm=6000)}, ratelimit_headers=True)
    url = await serve_app(sim.app())
    headers = {"Authorization": "Bearer k"}
    async with http.post(
        url + CHAT, data=chat_body(20, 100, stream=True), headers=headers
    ) as response:
        raw = await response.read()
        meter = UsageMeter(response.headers)
        assert int(response.headers["x-ratelimit-remaining-tokens"]) >= 6000 - 120
    meter.feed(raw)
    assert meter.units() == 120
    events = [line[6:] for line in raw.decode().splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    assert json.loads(events[-2])["usage"] == {
        "prompt_tokens": 20,
        "completion_tokens": 100,
        "total_tokens": 120,
    }
    assert sim.snapshot()["k"]["units"] == 120


async def test_settlement_charges_the_usage_reported(
    serve_app: StartUpstream, http: aiohttp.ClientSession
) -> None:
    """Once the answer is complete its charge is settled to the usage it reports: a short
    answer gets part of its estimate back, one without max_tokens pays for its completion."""
    sim = SimulatedUpstream(
        limits={"k": Limits(tpm=600)}, ratelimit_headers=True, completion_units=10
    )
    url = await serve_app(sim.app())
    # Estimated 250 units (25 s of the schedule), settled to 50 + 10: 6 s.
    answer = await chat(http, url, chat_body(50, 200))
    assert (await answer.json())["usage"]["total_tokens"] == 60
    assert 540 <= int(answer.headers["x-ratelimit-remaining-tokens"]) <= 590
    # Estimated 30 units (no max_tokens), settled to 30 + 10: 4 s more.
    answer = await chat(http, url, chat_body(30))
    assert 500 <= int(answer.headers["x-ratelimit-remaining-tokens"]) <= 560
    assert sim.snapshot()["k"]["units"] == 60 + 40


async def test_refund_does_not_bank_budget(
    serve_app: StartUpstream, http: aiohttp.ClientSession
) -> None:
    """A refund settled after the charge's time has passed leaves the schedule at now, not
    before it: an unused budget does not accumulate beyond one minute's worth."""
    sim = SimulatedUpstream(limits={"k": Limits(tpm=60_000)}, latency_s=0.3, completion_units=10)
    url = await serve_app(sim.app())
    before = time.monotonic()
    # Estimated 250 units (250 ms of the schedule), answered after 300 ms, settled to 60.
    assert (await chat(http, url, chat_body(50, 200))).status == 200
    after = time.monotonic()
    assert (
        before + 0.29 <= sim.stats["k"].unit_tat <= after
    )  # 0.29: a sleep may end early by a tick
