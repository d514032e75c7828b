"""Slow clients are bounded: a body that does not arrive within BODY_TIMEOUT gets 408 and frees
its lease and its upstream connection; a request that stays live keeps its lease renewed, so
``max_concurrency`` holds for it. (A thousand stalled clients: bench/slow_clients.py.)"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import pytest
from structlog.testing import capture_logs

from broker import Session

from .test_hostile_input import settled_leases, status_of

if TYPE_CHECKING:
    from proxy.serve import RunningReplica
    from tests.proxy.conftest import StartReplica

ONE = [Session(id="a", secret="secret-a", max_concurrency=1)]
HEAD = b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n"


async def stalled(replica: RunningReplica, head: bytes) -> bytes:
    """A client that sends its headers and the first 10 bytes of its body, then nothing: what it
    is answered until the proxy closes the connection."""
    port = int(replica.proxy_url.rsplit(":", 1)[1])
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head + b"\r\n" + b"x" * 10)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()


@pytest.mark.parametrize(
    "head",
    [
        pytest.param(HEAD, id="streamed-to-the-upstream"),
        pytest.param(HEAD + b"Content-Type: application/json\r\n", id="read-to-pre-charge"),
    ],
)
async def test_a_stalled_body_gets_408_and_frees_its_lease(
    start_replica: StartReplica, head: bytes
) -> None:
    """A body that stops coming gets 408 once BODY_TIMEOUT has passed since the request came,
    whether it was being streamed upstream (on a lease) or read first; the lease is released
    as unused, and the line logged is one WARNING."""
    sessions = [Session(id="a", secret="secret-a", max_concurrency=1, tpm=1000)]
    replica = await start_replica(sessions=sessions if b"json" in head else ONE, body_timeout=0.5)
    with capture_logs() as logs:
        answer = await stalled(replica, head)
    assert status_of(answer) == 408, answer
    assert await settled_leases(replica, ONE) == 0
    state = await replica.replica.pool.session_state("a")
    assert "n_network" not in state, state
    assert "n_timeout" not in state, state
    timed_out = [e for e in logs if e["event"] == "request body timed out"]
    assert [e["log_level"] for e in timed_out] == ["warning"]


async def test_a_live_request_keeps_its_lease_while_its_body_comes(
    start_replica: StartReplica,
) -> None:
    """A body that takes twice the lease TTL to come (within BODY_TIMEOUT): the lease is renewed
    meanwhile, never expires, and the session's one concurrency slot stays taken."""
    replica = await start_replica(sessions=ONE, lease_ttl=1, body_timeout=10)
    port = int(replica.proxy_url.rsplit(":", 1)[1])
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(HEAD + b"\r\n" + b"x" * 10)
    await writer.drain()
    await asyncio.sleep(2.2)
    state = await replica.replica.pool.session_state("a")
    assert state["in_flight"] == "1"
    assert "leases_expired" not in state
    writer.write(b"x" * 90)
    await writer.drain()
    answer = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert status_of(answer) == 200
    writer.close()
    await writer.wait_closed()
    assert await settled_leases(replica, ONE) == 0
