"""Streaming: answers reach the client as the upstream sends them, and leases follow the stream."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import aiohttp

from broker import Session

if TYPE_CHECKING:
    from tests.proxy.conftest import GatedStream, StartReplica, StartUpstream

ONE = [Session(id="a", secret="secret-a")]


def renewing_tasks() -> list[asyncio.Task[object]]:
    """The lease-renewing tasks in this event loop (proxy.request.lease's ``HeldLease._renew``)."""
    return [t for t in asyncio.all_tasks() if t.get_coro().__qualname__ == "HeldLease._renew"]


async def test_sse_arrives_incrementally(
    start_replica: StartReplica,
    serve_app: StartUpstream,
    http: aiohttp.ClientSession,
    upstream: GatedStream,
) -> None:
    """The client reads the first event while the upstream has not yet sent the last one."""
    replica = await start_replica(sessions=ONE, upstream_url=await serve_app(upstream.app()))
    async with http.get(replica.proxy_url + "/stream") as response:
        first = await asyncio.wait_for(response.content.readuntil(b"\n\n"), 5)
        assert first == b"data: first\n\n"
        assert not upstream.finished.is_set()
        upstream.gate.set()
        assert await response.content.read() == b"data: last\n\n"
    state = await replica.replica.pool.session_state("a")
    assert state["n_success"] == "1"


async def test_client_disconnect_frees_the_lease_at_once(
    start_replica: StartReplica,
    serve_app: StartUpstream,
    http: aiohttp.ClientSession,
    upstream: GatedStream,
) -> None:
    """A client that goes away mid-stream ends the upstream call and releases the lease."""
    replica = await start_replica(sessions=ONE, upstream_url=await serve_app(upstream.app()))
    response = await http.get(replica.proxy_url + "/stream")
    await asyncio.wait_for(response.content.readuntil(b"\n\n"), 5)
    assert (await replica.replica.pool.session_state("a"))["in_flight"] == "1"
    response.close()  # the client disconnects; the lease TTL (60 s) is far away
    for _ in range(100):
        if (await replica.replica.pool.session_state("a"))["in_flight"] == "0":
            break
        await asyncio.sleep(0.02)
    assert (await replica.replica.pool.session_state("a"))["in_flight"] == "0"
    await asyncio.wait_for(upstream.disconnected.wait(), 5)  # and the upstream call ended


async def test_lease_renewed_during_a_long_stream(
    start_replica: StartReplica,
    serve_app: StartUpstream,
    http: aiohttp.ClientSession,
    upstream: GatedStream,
) -> None:
    """A stream longer than the lease TTL keeps its lease: it is renewed, not expired; the
    renewing task starts with the first renewal and ends with the stream."""
    replica = await start_replica(
        sessions=ONE, upstream_url=await serve_app(upstream.app()), lease_ttl=1
    )
    async with http.get(replica.proxy_url + "/stream") as response:
        await response.content.readuntil(b"\n\n")
        await asyncio.sleep(2.0)  # twice the TTL
        state = await replica.replica.pool.session_state("a")
        assert state["in_flight"] == "1"
        assert "leases_expired" not in state
        assert len(renewing_tasks()) == 1
        upstream.gate.set()
        await response.read()
    for _ in range(100):
        if not renewing_tasks():
            break
        await asyncio.sleep(0.02)
    assert not renewing_tasks()


async def test_short_answer_starts_no_renewal(
    start_replica: StartReplica, http: aiohttp.ClientSession
) -> None:
    """An answer that ends before the first renewal is due never starts a renewing task."""
    replica = await start_replica(sessions=ONE)
    for _ in range(3):
        async with http.post(replica.proxy_url + "/echo", data=b"hello") as response:
            assert response.status == 200
            assert (await response.json())["body_bytes"] == 5
        assert not renewing_tasks()
    assert (await replica.replica.pool.session_state("a"))["n_success"] == "3"


async def test_client_gone_while_sending_its_body_costs_the_session_nothing(
    start_replica: StartReplica, http: aiohttp.ClientSession
) -> None:
    """A client that hangs up halfway through its request body is no failure of the session's:
    no network error is counted (it would trip a healthy session's breaker), the lease is freed."""
    replica = await start_replica(sessions=ONE)
    port = int(replica.proxy_url.rsplit(":", 1)[1])
    for _ in range(3):
        _reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n")
        writer.write(b"x" * 10_000)
        await writer.drain()
        await asyncio.sleep(0.3)  # the upstream call is under way, the body half sent
        writer.transport.abort()
    for _ in range(100):
        state = await replica.replica.pool.session_state("a")
        if state.get("in_flight") == "0":
            break
        await asyncio.sleep(0.02)
    assert state["in_flight"] == "0"
    assert "n_network" not in state, state
    assert state.get("breaker", "closed") == "closed"
