"""A lease taken is a lease released: a failure at each step of an attempt -- right after the
lease is taken, once the upstream has answered, while the lease is being released, a client
hanging up before the answer, an upstream breaking mid-answer or unreachable -- leaves no lease
held, and the client never gets a 500. (The hostile answers of tests/proxy/test_hostile_input.py
and the client hang-ups of tests/proxy/test_streaming.py are further steps.)"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import aiohttp
import pytest
from structlog.testing import capture_logs

from broker import Session
from proxy.testing import free_port
from proxy.testing.upstream import SimulatedUpstream

from .test_hostile_input import RawUpstream, settled_leases

if TYPE_CHECKING:
    from proxy.replica.replica import Replica
    from proxy.serve import RunningReplica
    from proxy.telemetry.metrics import Metrics
    from tests.proxy.conftest import StartReplica

TWO = [Session(id=n, secret=f"secret-{n}") for n in "ab"]
CHAT = "/v1/chat/completions"
BODY = {"model": "m", "messages": []}


class InjectedFault(Exception):
    """The failure a test makes one step of an attempt raise."""


class FailingAt:
    """The replica's metrics, whose hook ``hook`` raises after doing its work: the request
    path calls its hooks at known steps of an attempt, so each is a place to inject a failure."""

    def __init__(self, real: Metrics, hook: str) -> None:
        self._real = real
        self._hook = hook

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._real, name)
        if name != self._hook:
            return value

        def failing(*args: Any, **kwargs: Any) -> Any:
            value(*args, **kwargs)
            raise InjectedFault(name)

        return failing


class StartFailing:
    """Start a replica of sessions a and b whose metrics hook ``hook`` (if any) raises."""

    def __init__(self, start_replica: StartReplica) -> None:
        self._start_replica = start_replica

    async def __call__(self, hook: str | None = None, **overrides: Any) -> RunningReplica:
        def failing(replica: Replica) -> None:
            if hook is not None:
                replica.metrics = FailingAt(replica.metrics, hook)  # type: ignore[assignment]

        return await self._start_replica(sessions=TWO, before_start=failing, **overrides)


@pytest.fixture
def start_failing(start_replica: StartReplica) -> StartFailing:
    return StartFailing(start_replica)


@pytest.mark.parametrize(
    ("hook", "status"),
    [
        pytest.param("lease_taken", 502, id="after-the-lease-is-taken"),
        pytest.param("upstream_answered", 502, id="once-the-upstream-answered"),
        pytest.param("lease_released", 200, id="while-releasing"),
    ],
)
async def test_a_failure_in_an_attempt_releases_its_lease(
    start_failing: StartFailing,
    sim: SimulatedUpstream,
    http: aiohttp.ClientSession,
    hook: str,
    status: int,
) -> None:
    """Every attempt's lease is released, the failure is one ERROR line per attempt (no
    traceback reaches the client), and before anything was sent each session is tried."""
    replica = await start_failing(hook)
    with capture_logs() as logs:
        async with http.post(replica.proxy_url + CHAT, json=BODY) as response:
            assert response.status == status
            text = await response.text()
    assert "Traceback" not in text
    assert await settled_leases(replica, TWO) == 0
    failed = [e for e in logs if e["event"] == "attempt failed in the proxy"]
    if status == 502:
        assert sum(sim.attempts(s.secret) for s in TWO) == (2 if hook != "lease_taken" else 0)
        assert len(failed) == 2  # one per session tried
    assert all(e["log_level"] == "error" for e in failed)


async def test_a_client_gone_before_the_answer_releases_its_lease(
    start_failing: StartFailing, sim: SimulatedUpstream, http: aiohttp.ClientSession
) -> None:
    """A client that hangs up while the upstream has not answered yet: the lease is released
    (as unused) at once, not when the TTL runs out."""
    sim.latency_s = 2.0
    replica = await start_failing()
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.3):
            await http.post(replica.proxy_url + CHAT, json=BODY)
    assert await settled_leases(replica, TWO) == 0
    state = await replica.replica.pool.session_state("a")
    assert "n_network" not in state


async def test_an_upstream_broken_mid_answer_releases_its_lease(
    start_failing: StartFailing, http: aiohttp.ClientSession
) -> None:
    """An upstream that promises 100 bytes and hangs up after 2: the client's connection is
    dropped (a cut-off answer is not passed off as whole), the lease is released."""
    raw = RawUpstream(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\nConnection: close\r\n\r\nok")
    url, server = await raw.start()
    try:
        replica = await start_failing(upstream_url=url)
        with pytest.raises(aiohttp.ClientPayloadError):
            async with http.get(replica.proxy_url + "/echo") as response:
                await response.read()
        assert await settled_leases(replica, TWO) == 0
    finally:
        server.close()


async def test_an_unreachable_upstream_releases_every_lease(
    start_failing: StartFailing, http: aiohttp.ClientSession
) -> None:
    """Nothing listens where the upstream should be: each session is tried, each lease released,
    and the client gets 502."""
    replica = await start_failing(upstream_url=f"http://127.0.0.1:{free_port()}")
    async with http.get(replica.proxy_url + "/echo") as response:
        assert response.status == 502
    assert await settled_leases(replica, TWO) == 0
