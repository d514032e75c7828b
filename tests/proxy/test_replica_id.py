"""One replica id everywhere: the claim a replica holds in the store, its log lines, its metrics
and its admin API name it the same way (``<hostname>-<pid>-<4 hex>``)."""

from __future__ import annotations

import io
import json
import logging
import os
import socket
from typing import TYPE_CHECKING

import aiohttp
import redis.asyncio
import structlog

from broker.keys import PoolKeys
from proxy.telemetry.logs import configure_logging
from proxy.testing import SimulatedUpstream

if TYPE_CHECKING:
    from tests.proxy.conftest import StartReplica

TOKEN = "admin-token-4f0e2a9c71"
CHAT = "/v1/chat/completions"
BODY = {"model": "m", "messages": []}


async def test_one_id_in_claim_logs_metrics_and_admin(
    start_replica: StartReplica,
    shared_redis: str,
    sim: SimulatedUpstream,
    http: aiohttp.ClientSession,
) -> None:
    """Two replicas on one store: each claim's id is a replica's, and that replica's log lines,
    /metrics and /admin/pools carry the same id."""
    out = io.StringIO()
    configure_logging("info", "json", stream=out, cache=False)
    try:
        replicas = [
            await start_replica(redis_url=shared_redis, admin_token=TOKEN, pool="ids")
            for _ in range(2)
        ]
        for name in "abc":  # failed attempts, logged while serving a request
            sim.force(f"secret-{name}", 500)
        for running in replicas:
            async with http.post(running.proxy_url + CHAT, json=BODY) as response:
                await response.read()
    finally:
        structlog.reset_defaults()
        logging.getLogger().handlers.clear()
    store = redis.asyncio.Redis.from_url(shared_redis, decode_responses=True)
    try:
        claims = set(await store.zrange(PoolKeys("ids").claims, 0, -1))
    finally:
        await store.aclose()
    ids = {running.replica.id for running in replicas}
    assert claims == ids
    assert len(ids) == 2
    for running in replicas:
        host, pid, suffix = running.replica.id.rsplit("-", 2)
        assert (host, pid, len(suffix)) == (socket.gethostname(), str(os.getpid()), 4)
    logged = [json.loads(line) for line in out.getvalue().splitlines()]
    serving = [line["replica"] for line in logged if line["event"] == "serving"]
    assert sorted(serving) == sorted(ids)
    failed = [line["replica"] for line in logged if line["event"] == "attempt failed"]
    assert set(failed) == ids
    for running in replicas:
        headers = {"Authorization": f"Bearer {TOKEN}"}
        async with http.get(running.ops_url + "/admin/pools", headers=headers) as response:
            assert (await response.json())["replica"] == running.replica.id
        async with http.get(running.ops_url + "/metrics") as response:
            text = await response.text()
        assert f'session_broker_replica_info{{replica="{running.replica.id}"}} 1.0' in text
