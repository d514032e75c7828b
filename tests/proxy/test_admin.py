"""The admin API on ADMIN_LISTEN: token checks, validated bodies, actions that hold for the whole
fleet at once, an OpenAPI document that validates, and never a secret in an answer."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import aiohttp
import pytest
from openapi_spec_validator import validate

from broker import Session, Strategy
from proxy.ops.admin import openapi_document
from proxy.testing import SimulatedUpstream
from tests.proxy.conftest import SESSIONS, TIERED, GatedStream

if TYPE_CHECKING:
    from proxy.serve import RunningReplica
    from tests.proxy.conftest import StartReplica, StartUpstream

TOKEN = "admin-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
CHAT = "/v1/chat/completions"
BODY = {"model": "m", "messages": []}


async def call(
    http: aiohttp.ClientSession,
    replica: RunningReplica,
    method: str,
    path: str,
    *,
    headers: dict[str, str] | None = None,
    **kwargs: Any,
) -> tuple[int, Any, str]:
    url = f"{replica.ops_url}/admin{path}"
    async with http.request(
        method, url, headers=AUTH if headers is None else headers, **kwargs
    ) as r:
        text = await r.text()
        body = await r.json() if r.content_type == "application/json" else None
        return r.status, body, text


async def test_no_token_no_admin_api(
    start_replica: StartReplica, http: aiohttp.ClientSession
) -> None:
    """Without ADMIN_TOKEN the routes do not exist."""
    replica = await start_replica()
    for path in ("/sessions", "/pool", "/openapi.json"):
        status, _, _ = await call(http, replica, "GET", path)
        assert status == 404


@pytest.mark.parametrize(
    ("headers", "status"),
    [({}, 401), ({"Authorization": "Basic abc"}, 401), ({"Authorization": "Bearer wrong"}, 403)],
    ids=["none", "not-bearer", "wrong"],
)
async def test_token_required(
    start_replica: StartReplica, http: aiohttp.ClientSession, headers: dict[str, str], status: int
) -> None:
    """401 without a bearer token, 403 with a wrong one; on reads and on actions alike."""
    replica = await start_replica(admin_token=TOKEN)
    for method, path in (("GET", "/sessions"), ("POST", "/sessions/a/disable")):
        got, body, _ = await call(http, replica, method, path, headers=headers)
        assert got == status
        assert body["error"]["code"] in ("unauthenticated", "forbidden")
    assert (await replica.replica.admin.session("a")).state == "available"


async def raw_status(url: str, request: bytes) -> int:
    """The status code a raw HTTP/1.1 request to ``url``'s host and port gets."""
    host, _, port = url.removeprefix("http://").partition(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(request)
        status_line = await reader.readline()
    finally:
        writer.close()
        await writer.wait_closed()
    return int(status_line.split()[1])


@pytest.mark.parametrize(
    ("authorization", "status"),
    [(b"Bearer \xff\xfe\x80", 403), (TOKEN.encode() + b"\xff", 401), (b"\xc3\x28 x", 401)],
    ids=["bearer-non-utf8", "no-scheme", "non-utf8-scheme"],
)
async def test_token_that_is_not_utf8(
    start_replica: StartReplica, authorization: bytes, status: int
) -> None:
    """An Authorization header with bytes that are not UTF-8 gets 401 or 403, never a 500."""
    replica = await start_replica(admin_token=TOKEN)
    request = (
        b"GET /admin/sessions HTTP/1.1\r\nHost: admin\r\nAuthorization: "
        + authorization
        + b"\r\nConnection: close\r\n\r\n"
    )
    assert await raw_status(replica.ops_url, request) == status
    token = TOKEN.encode()
    for right in (b"Bearer " + token, b"Bearer " + token + b"\xff"):
        ok = request.replace(authorization, right)
        assert await raw_status(replica.ops_url, ok) == (200 if right.endswith(token) else 403)


@pytest.mark.parametrize(
    ("method", "path", "body", "field", "reason"),
    [
        ("PUT", "/sessions/a/weight", {"weight": -1}, "weight", ">"),
        ("PUT", "/sessions/a/weight", {"weight": "heavy"}, "weight", "Expected"),
        ("PUT", "/sessions/a/weight", {}, "weight", "missing"),
        ("PUT", "/sessions/a/weight", None, "(body)", "required"),
        ("PUT", "/sessions/a/weight", {"weight": 1, "extra": 2}, "extra", "unknown"),
        ("POST", "/sessions/a/disable", {"reason": "x" * 65}, "reason", "regex"),
        ("POST", "/sessions/a/disable", {"reason": "auth"}, "reason", "reserved"),
        ("POST", "/sessions/a/disable", "not json", "(body)", "JSON"),
    ],
)
async def test_bad_bodies_get_400_naming_field_and_reason(
    start_replica: StartReplica,
    http: aiohttp.ClientSession,
    method: str,
    path: str,
    body: Any,
    field: str,
    reason: str,
) -> None:
    """A body that does not validate: 400 with the field and the reason; nothing changes."""
    replica = await start_replica(admin_token=TOKEN)
    kwargs = {"data": body} if isinstance(body, str) else {"json": body} if body is not None else {}
    status, answer, _ = await call(http, replica, method, path, **kwargs)
    assert status == 400, answer
    assert answer["error"]["field"] == field
    assert reason in answer["error"]["reason"]
    view = await replica.replica.admin.session("a")
    assert (view.state, view.weight_override) == ("available", None)


async def test_sessions_and_summary_show_state_never_secrets(
    start_replica: StartReplica, sim: SimulatedUpstream, http: aiohttp.ClientSession
) -> None:
    """List, one session, pool summary: ids, states and health; no secret anywhere."""
    replica = await start_replica(
        admin_token=TOKEN, session_selection_strategy=Strategy.ROUND_ROBIN
    )
    sim.force("secret-b", 429, {"Retry-After": "30"})
    for _ in range(3):
        async with http.post(replica.proxy_url + CHAT, json=BODY) as response:
            await response.read()
    await asyncio.sleep(0.1)
    status, listing, text_list = await call(http, replica, "GET", "/sessions")
    assert status == 200
    assert [s["id"] for s in listing["sessions"]] == ["a", "b", "c"]
    b = listing["sessions"][1]
    assert (b["state"], b["outcomes"]["rate_limited"]) == ("cooling", 1)
    assert b["cooldown_until_ms"] > listing["now_ms"]
    status, one, text_one = await call(http, replica, "GET", "/sessions/b")
    assert (status, one) == (200, b)
    status, summary, text_summary = await call(http, replica, "GET", "/pool")
    assert status == 200
    assert summary["sessions"]["cooling"] == 1
    assert summary["sessions"]["total"] == 3
    status, missing, _ = await call(http, replica, "GET", "/sessions/zzz")
    assert (status, missing["error"]["code"]) == (404, "unknown_session")
    for text in (text_list, text_one, text_summary):
        for session in SESSIONS:
            assert session.secret not in text
        assert TOKEN not in text


async def test_sessions_and_summary_show_tiers_and_unit_budgets(
    start_replica: StartReplica, sim: SimulatedUpstream, http: aiohttp.ClientSession
) -> None:
    """Each session carries its tier, tpm, units counted and units left; the summary counts
    each tier's sessions and available ones, best first, and adds the budgets up."""
    replica = await start_replica(
        TIERED,
        admin_token=TOKEN,
        session_selection_strategy=Strategy.ROUND_ROBIN,
        usage_header="X-Usage-Tokens",
    )
    sim.force("secret-a", 200, {"X-Usage-Tokens": "30000"})
    admin = replica.replica.admin
    before_ms = await admin.now_ms()
    for _ in range(2):  # one each for a and b: tier 1 serves while it can
        async with http.post(replica.proxy_url + CHAT, json=BODY) as response:
            assert response.status == 200
    for _ in range(250):
        if (await admin.session("a")).units == 30_000:
            break
        await asyncio.sleep(0.02)
    status, listing, _ = await call(http, replica, "GET", "/sessions")
    after_ms = await admin.now_ms()
    assert status == 200
    budgets = {
        s["id"]: (s["priority"], s["tpm"], s["units"], s["units_available"])
        for s in listing["sessions"]
    }
    assert budgets["b"] == (1, None, 0, None)
    assert budgets["c"] == (0, 30_000, 0, 29_411)  # a full budget: 30000 / 1.02
    assert budgets["a"][:3] == (1, 60_000, 30_000)
    # 30000 units took 30000 x 1.02 ms of a one-minute budget; at most that much has refilled.
    assert 0 < budgets["a"][3] <= (after_ms - before_ms + 60_000 - 30_600) / 1.02
    status, summary, _ = await call(http, replica, "GET", "/pool")
    assert status == 200
    assert summary["tiers"] == [
        {"priority": 1, "sessions": 2, "available": 2},
        {"priority": 0, "sessions": 1, "available": 1},
    ]
    assert (summary["units"]["sessions"], summary["units"]["tpm"]) == (2, 90_000)
    assert summary["units"]["available"] >= budgets["a"][3] + 29_411
    assert summary["sessions_read"] == 3


async def test_disable_takes_effect_on_the_other_replica(
    start_replica: StartReplica,
    shared_redis: str,
    sim: SimulatedUpstream,
    http: aiohttp.ClientSession,
) -> None:
    """Disabled through replica two's admin API, session a is never used by replica one."""
    fields = {"redis_url": shared_redis, "admin_token": TOKEN}
    one = await start_replica(**fields, session_selection_strategy=Strategy.ROUND_ROBIN)
    two = await start_replica(**fields, session_selection_strategy=Strategy.ROUND_ROBIN)
    status, view, _ = await call(
        http, two, "POST", "/sessions/a/disable", json={"reason": "key rotation"}
    )
    assert (status, view["state"], view["disabled_reason"]) == (200, "disabled", "key rotation")
    for _ in range(6):
        async with http.post(one.proxy_url + CHAT, json=BODY) as response:
            assert response.status == 200
    assert sim.attempts("secret-a") == 0
    status, view, _ = await call(http, one, "POST", "/sessions/a/enable")
    assert (status, view["state"]) == (200, "available")
    for _ in range(3):
        async with http.post(two.proxy_url + CHAT, json=BODY) as response:
            assert response.status == 200
    assert sim.attempts("secret-a") == 1


async def test_drain_lets_the_request_in_flight_finish(
    start_replica: StartReplica,
    serve_app: StartUpstream,
    upstream: GatedStream,
    shared_redis: str,
    http: aiohttp.ClientSession,
) -> None:
    """Drained mid-stream through the other replica: the stream completes, no new request gets
    the session, and it shows draining, then drained."""
    url = await serve_app(upstream.app())
    fields = {"redis_url": shared_redis, "admin_token": TOKEN, "upstream_url": url}
    only = [Session(id="a", secret="secret-a")]
    one = await start_replica(only, **fields)
    two = await start_replica(only, **fields)
    async with http.get(f"{one.proxy_url}/stream") as streaming:
        assert await streaming.content.readuntil(b"\n\n") == b"data: first\n\n"
        status, view, _ = await call(http, two, "POST", "/sessions/a/drain")
        assert (status, view["state"], view["in_flight"]) == (200, "draining", 1)
        async with http.get(f"{one.proxy_url}/stream") as refused:
            assert refused.status == 503
        upstream.gate.set()
        assert await streaming.content.read() == b"data: last\n\n"
    for _ in range(100):
        _, view, _ = await call(http, two, "GET", "/sessions/a")
        if view["state"] == "drained":
            break
        await asyncio.sleep(0.02)
    assert (view["state"], view["in_flight"], view["outcomes"]["success"]) == ("drained", 0, 1)


async def test_weight_and_reset(
    start_replica: StartReplica, sim: SimulatedUpstream, http: aiohttp.ClientSession
) -> None:
    """PUT weight overrides the configured weight (null restores it); reset ends a cooldown."""
    replica = await start_replica(admin_token=TOKEN, sessions=SESSIONS[:1])
    status, view, _ = await call(http, replica, "PUT", "/sessions/a/weight", json={"weight": 4})
    assert (status, view["weight_override"], view["weight"]) == (200, 4.0, 1.0)
    status, view, _ = await call(http, replica, "PUT", "/sessions/a/weight", json={"weight": None})
    assert (status, view["weight_override"]) == (200, None)
    sim.force("secret-a", 429, {"Retry-After": "60"})
    async with http.post(replica.proxy_url + CHAT, json=BODY) as response:
        assert response.status == 429
    sim.unforce("secret-a")
    await asyncio.sleep(0.1)
    status, view, _ = await call(http, replica, "POST", "/sessions/a/reset")
    assert (status, view["state"], view["cooldown_until_ms"]) == (200, "available", 0)
    assert view["outcomes"]["rate_limited"] == 0
    async with http.post(replica.proxy_url + CHAT, json=BODY) as response:
        assert response.status == 200


async def test_openapi_document_is_valid_and_served(
    start_replica: StartReplica, http: aiohttp.ClientSession
) -> None:
    """The OpenAPI document validates as OpenAPI 3.1 and names every admin route."""
    validate(openapi_document())
    schemas = openapi_document()["components"]["schemas"]
    assert {"priority", "tpm", "units", "units_available"} <= set(
        schemas["SessionView"]["required"]
    )
    assert {"tiers", "units", "sessions_read"} <= set(schemas["PoolSummary"]["required"])
    assert {"TierCount", "UnitTotals"} <= set(schemas)
    replica = await start_replica(admin_token=TOKEN)
    status, document, _ = await call(http, replica, "GET", "/openapi.json")
    assert status == 200
    validate(document)
    assert set(document["paths"]) == {
        "/pool", "/pools", "/fleet", "/sessions", "/sessions/{id}", "/sessions/{id}/enable",
        "/sessions/{id}/disable", "/sessions/{id}/drain", "/sessions/{id}/reset",
        "/sessions/{id}/weight", "/openapi.json",
    }  # fmt: skip
    for path, operations in document["paths"].items():
        for method in operations:
            body = {"weight": 2} if path.endswith("weight") else None
            got, _, _ = await call(http, replica, method, path.replace("{id}", "a"), json=body)
            assert got == 200, (method, path)
