"""The console's files at /ui/ on ADMIN_LISTEN: only with ADMIN_TOKEN, no token needed for the
page itself, right content types, a strict Content-Security-Policy, revalidated caching, no path
traversal; and GET /admin/fleet, the fleet figures it shows."""

from __future__ import annotations

import asyncio
import re
from typing import TYPE_CHECKING, Any

import aiohttp
import pytest
from yarl import URL

from broker import Session
from proxy.ops.console import ASSETS, CONTENT_SECURITY_POLICY
from proxy.testing import SimulatedUpstream
from tests.proxy.conftest import SESSIONS

if TYPE_CHECKING:
    from tests.proxy.conftest import StartReplica

TOKEN = "console-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


async def test_no_console_without_admin_token(
    start_replica: StartReplica, http: aiohttp.ClientSession
) -> None:
    """Without ADMIN_TOKEN there is no admin API, and no console either."""
    replica = await start_replica()
    for path in ("/ui/", "/ui/console.js"):
        async with http.get(f"{replica.ops_url}{path}") as response:
            assert response.status == 404


async def test_files_served_without_token_with_their_types_and_policy(
    start_replica: StartReplica, http: aiohttp.ClientSession
) -> None:
    """The page, its stylesheet and script need no token; each has its content type, the strict
    CSP, nosniff and no-cache with an ETag; a revalidation with that ETag gets 304."""
    replica = await start_replica(admin_token=TOKEN)
    paths = {"/ui/": ASSETS["index.html"]} | {f"/ui/{name}": kind for name, kind in ASSETS.items()}
    for path, content_type in paths.items():
        async with http.get(f"{replica.ops_url}{path}") as response:
            body = await response.read()
            assert response.status == 200, path
            assert response.headers["Content-Type"] == content_type
            assert response.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
            assert "script-src 'self'" in CONTENT_SECURITY_POLICY
            assert "unsafe-inline" not in CONTENT_SECURITY_POLICY
            assert response.headers["X-Content-Type-Options"] == "nosniff"
            assert response.headers["Cache-Control"] == "no-cache"
            etag = response.headers["ETag"]
            assert body
        async with http.get(f"{replica.ops_url}{path}", headers={"If-None-Match": etag}) as again:
            assert again.status == 304
            assert await again.read() == b""
    async with http.get(f"{replica.ops_url}/ui", allow_redirects=False) as response:
        assert response.status == 308
        assert response.headers["Location"] == "/ui/"


async def test_page_has_no_inline_script_or_style(
    start_replica: StartReplica, http: aiohttp.ClientSession
) -> None:
    """The policy forbids inline code, so the page carries none: its script and styles are
    files of their own, and it holds no data (no session id)."""
    replica = await start_replica(admin_token=TOKEN)
    async with http.get(f"{replica.ops_url}/ui/") as response:
        page = await response.text()
    assert re.findall(r"<script[^>]*>", page) == ['<script src="console.js" defer>']
    assert "<style" not in page
    assert " style=" not in page
    assert not re.search(r"\son[a-z]+=", page)
    for session in SESSIONS:
        assert f">{session.id}<" not in page


@pytest.mark.parametrize(
    "path",
    [
        "/ui/../admin/sessions",
        "/ui/%2e%2e/%2e%2e/etc/passwd",
        "/ui/..%2fconsole.py",
        "/ui/%2e%2e%2fconsole.py",
        "/ui/console.py",
        "/ui/ui/index.html",
        "/ui//etc/passwd",
        "/ui/index.html%00.js",
        "/ui/.%2fconsole.js",
    ],
)
async def test_no_path_traversal(
    start_replica: StartReplica, http: aiohttp.ClientSession, path: str
) -> None:
    """Only the console's named files are served: a path that climbs out, names another file
    or smuggles a separator gets 404 (or, normalised to an admin route, 401: no data)."""
    replica = await start_replica(admin_token=TOKEN)
    url = URL(f"{replica.ops_url}{path}", encoded=True)
    async with http.get(url, allow_redirects=False) as response:
        body = await response.read()
        assert response.status in (404, 401), (path, response.status)
        assert b"import" not in body
        assert b"root:" not in body


async def test_fleet_figures(
    start_replica: StartReplica, http: aiohttp.ClientSession, shared_redis: str
) -> None:
    """GET /admin/fleet names every replica with a live claim on the pool (each sees the same
    two, and knows which is itself) and counts waiting requests; it needs the token."""
    first = await start_replica(admin_token=TOKEN, redis_url=shared_redis)
    second = await start_replica(admin_token=TOKEN, redis_url=shared_redis)
    seen = []
    for replica in (first, second):
        async with http.get(f"{replica.ops_url}/admin/fleet", headers=AUTH) as response:
            assert response.status == 200
            fleet = await response.json()
        assert fleet["pool"] == "default"
        assert fleet["replica"] == replica.replica.pool.claimant
        assert fleet["waiting_here"] == 0
        assert fleet["waiting_replicas"] == 0
        assert all(claim["claim_until_ms"] > fleet["now_ms"] for claim in fleet["replicas"])
        seen.append({claim["id"] for claim in fleet["replicas"]})
    claimants = {first.replica.pool.claimant, second.replica.pool.claimant}
    assert seen == [claimants, claimants]
    async with http.get(f"{first.ops_url}/admin/fleet") as response:
        assert response.status == 401
    async with http.get(f"{first.ops_url}/admin/fleet?pool=nope", headers=AUTH) as response:
        assert response.status == 404
    await second.stop()
    await asyncio.sleep(0)
    async with http.get(f"{first.ops_url}/admin/fleet", headers=AUTH) as response:
        fleet = await response.json()
    assert [claim["id"] for claim in fleet["replicas"]] == [first.replica.pool.claimant]


async def test_fleet_counts_requests_waiting(
    start_replica: StartReplica,
    http: aiohttp.ClientSession,
    shared_redis: str,
    sim: SimulatedUpstream,
) -> None:
    """While a request waits for the pool's one session (at its concurrency limit), the fleet
    figures count it here, and this replica among the replicas with waiters."""
    one = [Session(id="a", secret="secret-a", max_concurrency=1)]
    replica = await start_replica(one, admin_token=TOKEN, redis_url=shared_redis, queue_timeout=10)
    sim.latency_s = 1.0
    url = f"{replica.proxy_url}/v1/chat/completions"

    async def chat() -> int:
        async with http.post(url, json={"model": "m", "messages": []}) as response:
            await response.read()
            return response.status

    requests = [asyncio.create_task(chat()) for _ in range(2)]
    fleet: dict[str, Any] = {}
    for _ in range(100):
        async with http.get(f"{replica.ops_url}/admin/fleet", headers=AUTH) as response:
            fleet = await response.json()
        if fleet["waiting_here"]:
            break
        await asyncio.sleep(0.02)
    assert (fleet["waiting_here"], fleet["waiting_replicas"]) == (1, 1)
    assert await asyncio.gather(*requests) == [200, 200]
    async with http.get(f"{replica.ops_url}/admin/fleet", headers=AUTH) as response:
        fleet = await response.json()
    assert (fleet["waiting_here"], fleet["waiting_replicas"]) == (0, 0)
