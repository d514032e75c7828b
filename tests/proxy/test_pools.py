"""Several pools in one fleet: the sessions file's pools, routing by header, path prefix and
model, unknown routes, fallback chains (loops refused at start-up), and each pool's own keys."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis.asyncio

from broker import ConfigError, Outcome, Strategy
from proxy.config.pools import PoolTable, load_pools
from proxy.config.settings import Settings
from proxy.replica.leasing import Leasing
from proxy.request.routing import NoRoute, requested_model, route, route_model
from proxy.testing import SimulatedUpstream

from .conftest import StartReplica, StartUpstream
from .test_operator_cli import cli

UPSTREAM = "http://upstream.example"


def _file(tmp_path: Path, document: dict[str, Any], name: str = "pools.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(document))
    return path


def _load(tmp_path: Path, document: dict[str, Any], **settings: Any) -> PoolTable:
    path = _file(tmp_path, document)
    fields: dict[str, Any] = {"upstream_url": UPSTREAM, "sessions_file": str(path)}
    return load_pools(Settings(**(fields | settings)))


def _pool(*ids: str, **extra: Any) -> dict[str, Any]:
    return {"sessions": [{"id": i, "secret": f"secret-{i}"} for i in ids], **extra}


TWO_POOLS = {
    "default_pool": "chat",
    "pools": {
        "chat": _pool("p1", models=["gpt-4o", "gpt-4o-*"], fallback="cheap"),
        "cheap": _pool("c1", path_prefix="/cheap/", session_header="x-api-key: {secret}"),
    },
}


def test_pools_file_gives_each_pool_its_own_settings(tmp_path: Path) -> None:
    """A pool's own strategy, upstream and session header win; the settings fill the rest."""
    document = {
        "pools": {
            "a": _pool("x", strategy="round-robin", upstream_url="https://other.example/"),
            "b": _pool("x", session_header="Cookie: s={secret}"),
        }
    }
    table = _load(tmp_path, document)
    a, b = table.pools["a"], table.pools["b"]
    assert (a.strategy, a.upstream_url, a.header.name) == (
        Strategy.ROUND_ROBIN,
        "https://other.example",
        "Authorization",
    )
    assert (b.strategy, b.upstream_url, b.header.value("k")) == (
        Strategy.HEALTH,
        UPSTREAM,
        "s=k",
    )
    assert table.default is None  # two pools, none named default: a request must name one
    assert table.header == "X-Pool"


def test_toml_pools_and_a_lone_pool_is_the_default(tmp_path: Path) -> None:
    """TOML works too, and a single declared pool serves requests that name none."""
    path = tmp_path / "pools.toml"
    path.write_text('[pools.only]\nsessions = [{id = "a", secret = "s"}]\n')
    table = load_pools(Settings(upstream_url=UPSTREAM, sessions_file=str(path)))
    assert list(table.pools) == ["only"]
    assert table.default == "only"
    assert route_model(table, None, path_qs="/x").plan.name == "only"


def test_plain_sessions_make_one_pool_named_by_pool(tmp_path: Path) -> None:
    """SESSIONS, or a file with a plain list, is one pool named POOL, the default."""
    table = load_pools(Settings(upstream_url=UPSTREAM, sessions="k1,k2", pool="main"))
    assert list(table.pools) == ["main"]
    assert table.default == "main"
    assert len(table.pools["main"].sessions) == 2


@pytest.mark.parametrize(
    ("document", "message"),
    [
        pytest.param(
            {"pools": {"a": _pool("x", fallback="b"), "b": _pool("y", fallback="a")}},
            "fallback loop a -> b -> a",
            id="loop",
        ),
        pytest.param(
            {"pools": {"a": _pool("x", fallback="a")}}, "fallback loop a -> a", id="self-loop"
        ),
        pytest.param(
            {
                "pools": {
                    "a": _pool("x", fallback="b"),
                    "b": _pool("y", fallback="c"),
                    "c": _pool("z", fallback="b"),
                }
            },
            "fallback loop b -> c -> b",
            id="loop-further-down",
        ),
        pytest.param(
            {"pools": {"a": _pool("x", fallback="nope")}},
            "pool 'a' falls back to 'nope', which is not one of the pools",
            id="unknown-fallback",
        ),
        pytest.param(
            {"default_pool": "z", "pools": {"a": _pool("x")}},
            "default_pool 'z' is not one of the pools",
            id="unknown-default",
        ),
        pytest.param(
            {"pools": {"a": _pool("x", path_prefix="/v"), "b": _pool("y", path_prefix="/v/")}},
            "pools 'a' and 'b' both have path_prefix '/v'",
            id="same-prefix",
        ),
        pytest.param(
            {"pools": {"a": _pool("x", models=["m"]), "b": _pool("y", models=["m"])}},
            "pools 'a' and 'b' both list model 'm'",
            id="same-model",
        ),
        pytest.param(
            {"pools": {"a": _pool("x", path_prefix="v1")}},
            "path_prefix 'v1' is not a path like '/name'",
            id="bad-prefix",
        ),
        pytest.param(
            {"pools": {"a": _pool("x", session_header="no colon")}},
            "pool 'a': session_header is not 'Name: ...{secret}...'",
            id="bad-header",
        ),
        pytest.param(
            {"pools": {"a b": _pool("x")}}, "a pool name is letters, digits", id="bad-name"
        ),
        pytest.param({"pools": {}}, "'pools' is empty", id="no-pools"),
        pytest.param(
            {"pools": {"a": _pool("x")}, "sessions": []},
            "either 'sessions' (one pool) or 'pools'",
            id="both-forms",
        ),
        pytest.param(
            {"pools": {"a": _pool("x", upstream_url="ftp://h")}},
            "upstream_url 'ftp://h' is not an http(s) URL",
            id="bad-upstream",
        ),
        pytest.param(
            {"pools": {"a": {"sessions": [{"id": "x", "secret": "s"}], "fallbak": "b"}}},
            "unknown field `fallbak`",
            id="typo",
        ),
        pytest.param(
            {"pools": {"a": _pool("x", "x")}}, "pool 'a': session id 'x' appears twice", id="dup"
        ),
    ],
)
def test_bad_pools_are_refused_naming_the_problem(
    tmp_path: Path, document: dict[str, Any], message: str
) -> None:
    """A bad pools file stops start-up with an error that names the pool and the problem."""
    with pytest.raises(ConfigError, match="SESSIONS_FILE") as caught:
        _load(tmp_path, document)
    assert message in str(caught.value)
    assert "secret-" not in str(caught.value)


def test_a_pool_without_an_upstream_is_refused(tmp_path: Path) -> None:
    """With no UPSTREAM_URL every pool must have its own upstream_url."""
    path = _file(tmp_path, {"pools": {"a": _pool("x", upstream_url=UPSTREAM), "b": _pool("y")}})
    with pytest.raises(ConfigError, match="pool 'b': no upstream; set its upstream_url"):
        load_pools(Settings(sessions_file=str(path)))


def test_routing_table(tmp_path: Path) -> None:
    """Header first, then the longest path prefix (on a segment boundary, stripped), then the
    model (exact names before patterns), then the default; unknown names and models refused."""
    document = {
        "default_pool": "chat",
        "pools": {
            "chat": _pool("p1", models=["gpt-4o", "gpt-*"]),
            "mini": _pool("m1", models=["gpt-4o-mini"]),
            "cheap": _pool("c1", path_prefix="/cheap"),
            "cheaper": _pool("c2", path_prefix="/cheap/er"),
        },
    }
    table = _load(tmp_path, document)

    def explicit(named: str | None, path: str) -> tuple[str, str] | None:
        routed = route(table, named=named, path_qs=path)
        return None if routed is None else (routed.plan.name, routed.path_qs)

    assert explicit("mini", "/v1/x?a=1") == ("mini", "/v1/x?a=1")
    assert explicit("cheap", "/cheap/v1") == ("cheap", "/v1")
    assert explicit(None, "/cheap/v1/x?q=/cheap") == ("cheap", "/v1/x?q=/cheap")
    assert explicit(None, "/cheap?q=1") == ("cheap", "/?q=1")
    assert explicit(None, "/cheap") == ("cheap", "/")
    assert explicit(None, "/cheap/er/v1") == ("cheaper", "/v1")
    assert explicit(None, "/cheapest/v1") is None
    assert explicit(None, "/v1/chat") is None
    with pytest.raises(NoRoute, match="no pool named 'gold' \\(from X-Pool\\)"):
        route(table, named="gold", path_qs="/")
    assert route_model(table, "gpt-4o-mini", path_qs="/").plan.name == "mini"
    assert route_model(table, "gpt-4o", path_qs="/").plan.name == "chat"
    assert route_model(table, "gpt-3.5", path_qs="/").plan.name == "chat"
    assert route_model(table, None, path_qs="/").plan.name == "chat"
    with pytest.raises(NoRoute, match="no pool serves model 'claude-3'"):
        route_model(table, "claude-3", path_qs="/")
    assert [plan.name for plan in table.chain("chat")] == ["chat"]


def test_requested_model_reads_only_a_json_objects_model() -> None:
    """Only a JSON object's string ``model`` routes; any other body routes as if it had none."""
    assert requested_model(b'{"model": "m", "messages": [{"x": 1}]}') == "m"
    assert requested_model(b'{"model": 3}') is None
    assert requested_model(b"[1, 2]") is None
    assert requested_model(b"not json") is None
    assert requested_model(b"") is None


# End to end: real replicas, real upstreams, real Redis.


async def _echo(http: aiohttp.ClientSession, url: str, **kwargs: Any) -> tuple[int, dict[str, Any]]:
    async with http.post(url, **kwargs) as response:
        return response.status, await response.json()


def _headers(echo: dict[str, Any]) -> dict[str, str]:
    return {name.lower(): value for name, value in echo["headers"]}


async def test_requests_route_by_header_path_and_model(
    tmp_path: Path,
    start_replica: StartReplica,
    serve_app: StartUpstream,
    sim: SimulatedUpstream,
    shared_redis: str,
    http: aiohttp.ClientSession,
) -> None:
    """Each route reaches its pool's upstream with its pool's credential; the pool header never
    reaches an upstream; unknown pools and models get 404 naming them; each pool has its own
    hash tag in Redis."""
    other = SimulatedUpstream(credential_header="x-api-key", credential_prefix="")
    other_url = await serve_app(other.app())
    document = json.loads(json.dumps(TWO_POOLS))
    document["pools"]["cheap"]["upstream_url"] = other_url
    path = _file(tmp_path, document)
    replica = await start_replica(None, sessions_file=str(path), redis_url=shared_redis)
    url = replica.proxy_url

    status, echo = await _echo(http, f"{url}/echo", headers={"X-Pool": "cheap"}, data=b"{}")
    assert status == 200
    assert _headers(echo)["x-api-key"] == "secret-c1"
    assert "x-pool" not in _headers(echo)
    assert "authorization" not in _headers(echo)
    assert echo["path"] == "/echo"

    status, echo = await _echo(http, f"{url}/cheap/echo?q=1", data=b"x")
    assert (status, echo["raw_path"]) == (200, "/echo?q=1")
    assert _headers(echo)["x-api-key"] == "secret-c1"

    status, echo = await _echo(http, f"{url}/echo", json={"model": "gpt-4o-mini"})
    assert status == 200
    assert _headers(echo)["authorization"] == "Bearer secret-p1"
    assert echo["body_bytes"] == len(json.dumps({"model": "gpt-4o-mini"}))

    status, echo = await _echo(http, f"{url}/echo")  # no body, no header: the default pool
    assert (status, _headers(echo)["authorization"]) == (200, "Bearer secret-p1")

    before = (sim.attempts("secret-p1"), other.attempts("secret-c1"))
    status, body = await _echo(http, f"{url}/echo", json={"model": "claude-3"})
    assert (status, body["error"]["code"]) == (404, "unknown_model")
    assert "claude-3" in body["error"]["message"]
    status, body = await _echo(http, f"{url}/echo", headers={"X-Pool": "gold"})
    assert (status, body["error"]["code"]) == (404, "unknown_pool")
    assert "'gold'" in body["error"]["message"]
    assert (sim.attempts("secret-p1"), other.attempts("secret-c1")) == before

    client = redis.asyncio.Redis.from_url(shared_redis, decode_responses=True)
    try:
        assert await client.zrange("sb:{chat}:members", 0, -1) == ["p1"]
        assert await client.zrange("sb:{cheap}:members", 0, -1) == ["c1"]
    finally:
        await client.aclose()


async def test_no_default_pool_means_a_request_must_name_one(
    tmp_path: Path, start_replica: StartReplica, http: aiohttp.ClientSession
) -> None:
    """With several pools and no default, a request that names none gets 404, not a guess."""
    path = _file(tmp_path, {"pools": {"a": _pool("x"), "b": _pool("y", path_prefix="/b")}})
    replica = await start_replica(None, sessions_file=str(path))
    status, body = await _echo(http, f"{replica.proxy_url}/echo")
    assert (status, body["error"]["code"]) == (404, "no_pool_route")
    status, _ = await _echo(http, f"{replica.proxy_url}/b/echo")
    assert status == 200


async def test_fallback_pool_serves_while_the_primary_cools(
    tmp_path: Path,
    start_replica: StartReplica,
    sim: SimulatedUpstream,
    shared_redis: str,
    http: aiohttp.ClientSession,
) -> None:
    """When every session of a pool is cooling, its fallback serves at once (two replicas);
    once the cooldown ends, the pool serves again."""
    sim.credential_header, sim.credential_prefix = "x-key", ""
    document = {
        "pools": {
            "chat": _pool("p1", "p2", fallback="cheap", session_header="x-key: {secret}"),
            "cheap": _pool("c1", session_header="x-key: {secret}"),
        },
        "default_pool": "chat",
    }
    path = _file(tmp_path, document)
    replicas = [
        await start_replica(None, sessions_file=str(path), redis_url=shared_redis) for _ in range(2)
    ]
    for secret in ("secret-p1", "secret-p2"):
        sim.force(secret, 429, {"Retry-After": "2"})
    first = replicas[0].proxy_url
    async with http.post(f"{first}/echo") as response:
        assert response.status == 200  # p1 and p2 answer 429, then cheap serves
    primary = sim.attempts("secret-p1") + sim.attempts("secret-p2")
    assert primary == 2
    assert sim.attempts("secret-c1") == 1
    chat = replicas[0].replica.leasing.pool("chat")
    for _ in range(100):  # releases land in the background
        states = [(await chat.session_state(i)).get("state") for i in ("p1", "p2")]
        if states == ["cooling", "cooling"]:
            break
        await asyncio.sleep(0.01)
    for replica in replicas * 3:
        async with http.post(f"{replica.proxy_url}/echo") as response:
            assert response.status == 200
    assert sim.attempts("secret-p1") + sim.attempts("secret-p2") == primary  # still cooling
    assert sim.attempts("secret-c1") == 7

    sim.unforce("secret-p1")
    sim.unforce("secret-p2")
    served_by_primary = 0
    for _ in range(200):  # the 2 s cooldown ends; then chat serves again
        async with http.post(f"{replicas[1].proxy_url}/echo") as response:
            assert response.status == 200
        if sim.attempts("secret-p1", 200) + sim.attempts("secret-p2", 200):
            served_by_primary += 1
            break
        await asyncio.sleep(0.05)
    assert served_by_primary == 1
    cheap = sim.attempts("secret-c1")
    for _ in range(4):
        async with http.post(f"{replicas[0].proxy_url}/echo") as response:
            assert response.status == 200
    assert sim.attempts("secret-c1") == cheap  # back on the primary, the fallback rests


def test_a_fallback_loop_stops_serve_at_start_up(tmp_path: Path) -> None:
    """`session-broker serve` with a looping fallback chain exits 2 naming the loop."""
    path = _file(
        tmp_path, {"pools": {"a": _pool("x", fallback="b"), "b": _pool("y", fallback="a")}}
    )
    env = {
        **os.environ,
        "UPSTREAM_URL": UPSTREAM,
        "SESSIONS_FILE": str(path),
        "LISTEN": "127.0.0.1:0",
    }
    env.pop("REDIS_URL", None)
    env.pop("SESSIONS", None)
    done = subprocess.run(
        [sys.executable, "-m", "proxy", "serve"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "fallback loop a -> b -> a" in done.stderr
    assert "Traceback" not in done.stderr


async def test_admin_api_and_metrics_show_every_pool(
    tmp_path: Path, start_replica: StartReplica, http: aiohttp.ClientSession
) -> None:
    """/admin/pools lists each pool's routes, fallback chain and summary; ``?pool=`` picks the
    pool of every other route (404 for one not served); metrics carry each pool."""
    token = "t" * 32
    path = _file(tmp_path, TWO_POOLS)
    replica = await start_replica(None, sessions_file=str(path), admin_token=token)
    auth = {"Authorization": f"Bearer {token}"}
    admin_url = f"{replica.ops_url}/admin"
    async with http.get(f"{admin_url}/pools", headers=auth) as response:
        assert response.status == 200
        listing = await response.json()
    assert (listing["pool_header"], listing["default_pool"]) == ("X-Pool", "chat")
    pools = {p["name"]: p for p in listing["pools"]}
    assert pools["chat"]["fallbacks"] == ["cheap"]
    assert pools["chat"]["models"] == ["gpt-4o", "gpt-4o-*"]
    assert pools["chat"]["default"] is True
    assert pools["cheap"]["path_prefix"] == "/cheap"
    assert pools["cheap"]["summary"]["sessions"]["total"] == 1
    assert pools["cheap"]["upstream"] == replica.replica.settings.upstream_url
    assert "secret-" not in json.dumps(listing)

    async with http.get(f"{admin_url}/sessions?pool=cheap", headers=auth) as response:
        listed = await response.json()
    assert (listed["pool"], [s["id"] for s in listed["sessions"]]) == ("cheap", ["c1"])
    async with http.get(f"{admin_url}/sessions", headers=auth) as response:
        assert [s["id"] for s in (await response.json())["sessions"]] == ["p1"]
    async with http.post(f"{admin_url}/sessions/c1/disable?pool=cheap", headers=auth) as response:
        assert response.status == 200
    async with http.get(f"{admin_url}/sessions/c1?pool=chat", headers=auth) as response:
        assert response.status == 404  # c1 is cheap's, not chat's
    async with http.get(f"{admin_url}/pool?pool=gold", headers=auth) as response:
        assert response.status == 404
        assert (await response.json())["error"]["code"] == "unknown_pool"

    async with http.get(f"{replica.ops_url}/metrics") as response:
        text = await response.text()
    assert 'session_broker_pool_info{default="true",fallback="cheap",pool="chat"} 1.0' in text
    assert 'session_broker_pool_info{default="false",fallback="",pool="cheap"} 1.0' in text
    assert 'session_broker_pool_sessions{pool="cheap",state="disabled"} 1.0' in text


async def test_status_shows_every_pool_with_its_routes_and_fallbacks(
    tmp_path: Path, start_replica: StartReplica, shared_redis: str
) -> None:
    """`status` with only REDIS_URL shows each pool the fleet serves, how requests reach it and
    what it falls back to; POOL narrows it to one; a pool leaves the list with its last replica."""
    path = _file(tmp_path, TWO_POOLS)
    replica = await start_replica(None, sessions_file=str(path), redis_url=shared_redis)
    shown = await cli("status", env={"REDIS_URL": shared_redis}, terminal=True)
    assert shown.returncode == 0, shown.stderr
    text = shown.stdout
    assert "== pool cheap: path /cheap/..." in text
    assert "== pool chat: the default; models gpt-4o, gpt-4o-*; falls back to cheap" in text
    assert "pool chat (health): 1 sessions" in text
    assert "pool cheap (health): 1 sessions" in text

    one = await cli("status", "--json", env={"REDIS_URL": shared_redis, "POOL": "cheap"})
    document = json.loads(one.stdout)
    assert document["pool"] == "cheap"
    assert document["route"]["path_prefix"] == "/cheap"
    both = await cli("status", "--json", env={"REDIS_URL": shared_redis})
    assert [p["pool"] for p in json.loads(both.stdout)["pools"]] == ["chat", "cheap"]
    assert "secret-" not in text + one.stdout + both.stdout

    await replica.stop()
    client = redis.asyncio.Redis.from_url(shared_redis)
    try:
        assert await client.hgetall("sb:pools") == {}
    finally:
        await client.aclose()


async def test_a_reload_adds_and_drops_pools_and_refuses_a_loop(
    tmp_path: Path, start_replica: StartReplica, shared_redis: str, http: aiohttp.ClientSession
) -> None:
    """A changed file adds a pool (served at once), drops one (its claim goes, so its sessions
    leave it), and a file with a fallback loop is refused while the pools in use keep serving."""
    path = _file(tmp_path, {"pools": {"a": _pool("x")}})
    running = await start_replica(None, sessions_file=str(path), redis_url=shared_redis)
    replica = running.replica
    url = f"{running.proxy_url}/echo"
    async with http.post(url, headers={"X-Pool": "b"}) as response:
        assert response.status == 404

    _file(tmp_path, {"pools": {"a": _pool("x"), "b": _pool("y")}, "default_pool": "a"})
    await replica.reload()
    async with http.post(url, headers={"X-Pool": "b"}) as response:
        assert response.status == 200
    client = redis.asyncio.Redis.from_url(shared_redis, decode_responses=True)
    try:
        assert await client.zrange("sb:{b}:members", 0, -1) == ["y"]
        assert set(await client.hkeys("sb:pools")) == {"a", "b"}

        _file(tmp_path, {"pools": {"a": _pool("x", fallback="b"), "b": _pool("y", fallback="a")}})
        await replica.reload()  # refused: logged, nothing changes
        assert set(replica.plans) == {"a", "b"}
        assert replica.plans["a"].fallback is None

        _file(tmp_path, {"pools": {"b": _pool("y")}})
        await replica.reload()
        async with http.post(url, headers={"X-Pool": "a"}) as response:
            assert response.status == 404
        async with http.post(url) as response:
            assert response.status == 200  # b is the lone pool now, so the default
        assert await client.zrange("sb:{a}:members", 0, -1) == []
        assert set(await client.hkeys("sb:pools")) == {"b"}
    finally:
        await client.aclose()


def test_a_long_unknown_name_is_cut_short_in_the_error(tmp_path: Path) -> None:
    """A 404 repeats what was asked for, but never more than SHOWN_MAX characters of it."""
    table = _load(tmp_path, TWO_POOLS)
    with pytest.raises(NoRoute) as caught:
        route(table, named="x" * 5000, path_qs="/")
    assert len(caught.value.message) < 200
    with pytest.raises(NoRoute) as caught:
        route_model(table, "m" * 5000, path_qs="/")
    assert "mmm..." in caught.value.message
    assert len(caught.value.message) < 200


async def test_dropping_a_pool_served_locally_in_an_outage_keeps_the_fleets_record(
    shared_redis: str,
) -> None:
    """A replica that served a pool from its local fallback (REDIS_FAILURE_MODE=open) and then
    drops that pool leaves the fleet's record of it alone while another replica still serves it."""
    settings = Settings(upstream_url=UPSTREAM, sessions="k1", pool="a", redis_url=shared_redis)
    table = load_pools(settings)
    one, two = (
        Leasing(settings.broker(), table, queue_max=10, failure_mode="open") for _ in range(2)
    )
    try:
        for leasing in (one, two):
            await leasing.sync_all()
        one.store_up = False  # as in an outage: the lease comes from one's local pool
        lease, pool = await one.lease("a", exclude=(), timeout_s=0)
        assert pool.redis is not one.store
        await pool.release(lease, Outcome.SUCCESS)
        one.store_up = True
        await one.retire(one.configure(PoolTable({})))
        client = redis.asyncio.Redis.from_url(shared_redis, decode_responses=True)
        try:
            assert set(await client.hkeys("sb:pools")) == {"a"}  # two still serves it
        finally:
            await client.aclose()
    finally:
        for leasing in (one, two):
            await leasing.close()
