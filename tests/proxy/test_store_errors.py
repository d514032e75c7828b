"""The store's errors say what happened: out of memory, credentials refused and unreachable are
told apart in the 503 a client gets, in the admin API's 503 and in the log, against a real
Redis driven into each state."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, MutableMapping
from typing import TYPE_CHECKING, Any

import aiohttp
import pytest
import redis.asyncio
from structlog.testing import capture_logs

from proxy.config.settings import Settings
from proxy.replica.replica import Replica
from proxy.serve import start
from tests.proxy.conftest import ACL_PASSWORD, ACL_USER, SESSIONS

if TYPE_CHECKING:
    from tests.proxy.conftest import StartReplica

CHAT = "/v1/chat/completions"
BODY = {"model": "m", "messages": []}
TOKEN = "t" * 32


@pytest.fixture
async def store(shared_redis: str) -> AsyncIterator[redis.asyncio.Redis]:
    """A client of the test Redis, whose ``maxmemory`` is lifted again after the test."""
    client = redis.asyncio.Redis.from_url(shared_redis)
    try:
        yield client
    finally:
        await client.config_set("maxmemory", 0)
        await client.aclose()


async def store_unavailable(http: aiohttp.ClientSession, url: str) -> str:
    """The message of the 503 ``store_unavailable`` a request to ``url`` gets."""
    async with http.post(url + CHAT, json=BODY) as response:
        assert response.status == 503
        error = (await response.json())["error"]
    assert error["code"] == "store_unavailable"
    message: str = error["message"]
    return message


def down_events(logs: list[MutableMapping[str, Any]]) -> list[tuple[str, str]]:
    """The ERROR lines that marked the store down: (event, failure)."""
    return [(e["event"], e["failure"]) for e in logs if e.get("log_level") == "error"]


async def test_out_of_memory(
    start_replica: StartReplica,
    shared_redis: str,
    store: redis.asyncio.Redis,
    http: aiohttp.ClientSession,
) -> None:
    """Redis at its maxmemory: clients and the admin API are told the store is out of memory,
    and the log says so once, not that the store is unreachable."""
    replica = await start_replica(redis_url=shared_redis, admin_token=TOKEN)
    await store.config_set("maxmemory", 1)  # every write is refused now
    with capture_logs() as logs:
        first = await store_unavailable(http, replica.proxy_url)
        again = await store_unavailable(http, replica.proxy_url)
    assert first == again == "the session store is out of memory; retry later"
    assert down_events(logs) == [("session store out of memory", "out_of_memory")]
    headers = {"Authorization": f"Bearer {TOKEN}"}
    disable = f"{replica.ops_url}/admin/sessions/a/disable"
    async with http.post(disable, headers=headers, json={}) as response:
        assert response.status == 503
        assert (await response.json())["error"]["message"] == "the session store is out of memory"


async def test_credentials_refused(
    start_replica: StartReplica,
    acl_user: str,
    store: redis.asyncio.Redis,
    http: aiohttp.ClientSession,
) -> None:
    """The replica's Redis user gets a new password while it runs: clients are told the store
    refused the credentials, and the log says so."""
    replica = await start_replica(redis_url=acl_user.format(password=ACL_PASSWORD))
    async with http.post(replica.proxy_url + CHAT, json=BODY) as response:
        assert response.status == 200
    await store.acl_setuser(ACL_USER, reset_passwords=True, passwords=["+another-password"])
    await store.client_kill_filter(user=ACL_USER)  # its connections must log in again
    with capture_logs() as logs:
        message = await store_unavailable(http, replica.proxy_url)
    assert message == "the session store refused the credentials; retry later"
    assert down_events(logs) == [("session store refused the credentials", "authentication")]


async def test_unreachable(
    upstream_url: str, free_port: Callable[[], int], http: aiohttp.ClientSession
) -> None:
    """Nothing listens at REDIS_URL: clients are told the store is unreachable, and so is the
    log."""
    settings = Settings(
        upstream_url=upstream_url,
        redis_url=f"redis://127.0.0.1:{free_port()}/0",
        listen="127.0.0.1:0",
        admin_listen="127.0.0.1:0",
    )
    with capture_logs() as logs:
        running = await start(Replica(settings, SESSIONS))
        try:
            message = await store_unavailable(http, running.proxy_url)
        finally:
            await running.stop()
    assert message == "the session store is unreachable; retry later"
    assert down_events(logs) == [("session store unreachable", "unreachable")]
