"""Graceful shutdown of a real `session-broker serve` process on SIGTERM."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

import aiohttp
import pytest
import redis.asyncio

from tests.proxy.conftest import wait_ready

if TYPE_CHECKING:
    from tests.proxy.conftest import GatedStream, StartUpstream


@pytest.mark.slow
@pytest.mark.parametrize("event_loop", ["uvloop", "asyncio"])
async def test_sigterm_lets_a_running_stream_finish(
    event_loop: str,
    serve_app: StartUpstream,
    shared_redis: str,
    http: aiohttp.ClientSession,
    upstream: GatedStream,
    free_port: Callable[[], int],
) -> None:
    """SIGTERM mid-stream: readiness false, new requests 503, the stream completes, the process
    exits 0 and no lease is left in the store; on either EVENT_LOOP, which the log names."""
    upstream_url = await serve_app(upstream.app())
    proxy_port, ops_port = free_port(), free_port()
    env = os.environ | {
        "UPSTREAM_URL": upstream_url,
        "SESSIONS": "secret-one",
        "REDIS_URL": shared_redis,
        "LISTEN": f"127.0.0.1:{proxy_port}",
        "ADMIN_LISTEN": f"127.0.0.1:{ops_port}",
        "SHUTDOWN_GRACE": "20",
        "LOG_FORMAT": "json",
        "EVENT_LOOP": event_loop,
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "proxy", env=env, stderr=asyncio.subprocess.PIPE
    )
    try:
        await wait_ready(http, f"http://127.0.0.1:{ops_port}/readyz")
        stream = await http.get(f"http://127.0.0.1:{proxy_port}/stream")
        assert await stream.content.readuntil(b"\n\n") == b"data: first\n\n"
        process.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.3)
        async with http.get(f"http://127.0.0.1:{ops_port}/readyz") as ready:
            assert ready.status == 503
        async with http.get(f"http://127.0.0.1:{proxy_port}/stream") as refused:
            assert refused.status == 503
            assert (await refused.json())["error"]["code"] == "shutting_down"
        upstream.gate.set()
        assert await stream.content.read() == b"data: last\n\n"
        stream.close()
        assert await asyncio.wait_for(process.wait(), 15) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    stderr = (await process.stderr.read()).decode()  # type: ignore[union-attr]
    assert "Traceback" not in stderr
    serving = [line for line in stderr.splitlines() if '"event": "serving"' in line]
    assert len(serving) == 1
    assert json.loads(serving[0])["event_loop"] == event_loop
    store = redis.asyncio.Redis.from_url(shared_redis, decode_responses=True)
    assert await store.zcard("sb:{default}:leases") == 0
    # The stopped replica has left the pool (its claim is dropped); the session's hash stays.
    hashes = [key async for key in store.scan_iter(match="sb:{default}:s:*")]
    assert [await store.hget(key, "in_flight") for key in hashes] == ["0"]
    await store.aclose()
