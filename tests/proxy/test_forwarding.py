"""Forwarding through a replica over real sockets: what reaches the upstream, what comes back."""

from __future__ import annotations

import asyncio
import socket
from typing import TYPE_CHECKING

import aiohttp
from yarl import URL

from broker import Strategy
from proxy.testing import SimulatedUpstream

if TYPE_CHECKING:
    from tests.proxy.conftest import StartReplica, StartUpstream


async def echo(http: aiohttp.ClientSession, url: str | URL, **kwargs: object) -> dict[str, object]:
    async with http.request(str(kwargs.pop("method", "GET")), url, **kwargs) as response:  # type: ignore[arg-type]
        assert response.status == 200, await response.text()
        result: dict[str, object] = await response.json()
        return result


def header_map(seen: dict[str, object]) -> dict[str, str]:
    return {name.lower(): value for name, value in seen["headers"]}  # type: ignore[attr-defined, misc]


async def test_method_path_query_and_body_reach_the_upstream(
    start_replica: StartReplica, http: aiohttp.ClientSession
) -> None:
    """Method, path, query string and body arrive unchanged."""
    replica = await start_replica()
    url = URL(f"{replica.proxy_url}/echo?x=1&y=%2F%26", encoded=True)  # as sent, byte for byte
    seen = await echo(http, url, method="PUT", data=b"z" * 5000)
    assert seen["method"] == "PUT"
    assert seen["path"] == "/echo"
    assert seen["raw_path"] == "/echo?x=1&y=%2F%26"
    assert seen["body_bytes"] == 5000


async def test_client_credentials_never_reach_the_upstream(
    start_replica: StartReplica, http: aiohttp.ClientSession
) -> None:
    """The client's Authorization, Cookie and API-key headers are replaced by the session's."""
    replica = await start_replica()
    headers = {
        "Authorization": "Bearer client-own-key",
        "Cookie": "session-token=client-cookie",
        "X-Api-Key": "client-api-key",
        "X-Custom": "kept",
    }
    seen = header_map(
        await echo(
            http,
            f"{replica.proxy_url}/echo",
            headers=headers,
            skip_auto_headers=("Accept", "Accept-Encoding", "User-Agent"),
        )
    )
    assert seen["authorization"] in {f"Bearer secret-{n}" for n in "abc"}
    assert "cookie" not in seen
    assert "x-api-key" not in seen
    assert seen["x-custom"] == "kept"
    # Nothing the client did not send: no header of the HTTP client's own.
    assert {"accept", "accept-encoding", "user-agent"}.isdisjoint(seen)
    assert "client-" not in repr(seen)


async def test_client_accept_and_user_agent_pass_as_sent(
    start_replica: StartReplica, http: aiohttp.ClientSession
) -> None:
    """The client's own Accept, Accept-Encoding and User-Agent reach the upstream unchanged."""
    replica = await start_replica()
    headers = {"Accept": "text/plain", "Accept-Encoding": "br", "User-Agent": "client-agent/1"}
    seen = header_map(await echo(http, f"{replica.proxy_url}/echo", headers=headers))
    assert seen["accept"] == "text/plain"
    assert seen["accept-encoding"] == "br"
    assert seen["user-agent"] == "client-agent/1"


async def test_cookie_session_header(
    start_replica: StartReplica, http: aiohttp.ClientSession, serve_app: StartUpstream
) -> None:
    """With a cookie SESSION_HEADER the secret goes there; the client's cookie is gone."""
    cookie_sim = SimulatedUpstream(credential_header="Cookie", credential_prefix="session-token=")
    url = await serve_app(cookie_sim.app())
    replica = await start_replica(upstream_url=url, session_header="Cookie: session-token={secret}")
    headers = {"Cookie": "session-token=client-cookie", "Authorization": "Bearer client-key"}
    seen = header_map(await echo(http, f"{replica.proxy_url}/echo", headers=headers))
    assert seen["cookie"].startswith("session-token=secret-")
    assert "authorization" not in seen


async def test_hop_by_hop_headers_dropped_and_host_rewritten(
    start_replica: StartReplica, http: aiohttp.ClientSession, upstream_url: str
) -> None:
    """Connection-scoped headers and those the Connection header names are not passed on."""
    replica = await start_replica()
    headers = {"Connection": "keep-alive, X-Secret-Hop", "X-Secret-Hop": "1", "Keep-Alive": "5",
               "TE": "trailers", "Host": "evil.example"}  # fmt: skip
    seen = header_map(await echo(http, f"{replica.proxy_url}/echo", headers=headers))
    assert "x-secret-hop" not in seen
    assert "keep-alive" not in seen
    assert "te" not in seen
    assert seen["host"] == upstream_url.removeprefix("http://")
    assert len(seen["x-request-id"]) > 0


async def test_absolute_uri_goes_to_the_configured_upstream_only(
    start_replica: StartReplica,
) -> None:
    """A request in absolute form names another host; the proxy still asks only its upstream."""
    replica = await start_replica()
    port = int(replica.proxy_url.rsplit(":", 1)[1])
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET http://evil.example/echo HTTP/1.1\r\nHost: evil.example\r\n"
                 b"Connection: close\r\n\r\n")  # fmt: skip
    answer = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    assert answer.startswith(b"HTTP/1.1 200")
    assert b'"path": "/echo"' in answer or b'"path":"/echo"' in answer


async def test_request_id_passed_through(
    start_replica: StartReplica, http: aiohttp.ClientSession
) -> None:
    """A client's X-Request-ID reaches the upstream and comes back on the response."""
    replica = await start_replica()
    async with http.get(f"{replica.proxy_url}/echo", headers={"X-Request-ID": "req-42"}) as resp:
        seen = header_map(await resp.json())
        assert resp.headers["X-Request-ID"] == "req-42"
    assert seen["x-request-id"] == "req-42"


async def test_client_errors_returned_as_they_are_without_penalty(
    start_replica: StartReplica, http: aiohttp.ClientSession
) -> None:
    """A 400 from the upstream is the client's: returned once, no retry, counted as success."""
    replica = await start_replica(session_selection_strategy=Strategy.ROUND_ROBIN)
    async with http.post(f"{replica.proxy_url}/v1/chat/completions", data=b"not json") as resp:
        assert resp.status == 400
    states = [await replica.replica.pool.session_state(n) for n in "abc"]
    assert sum(int(s.get("n_success", 0)) for s in states) == 1
    assert all("last_error" not in s for s in states)


async def test_body_over_the_limit_is_413(
    start_replica: StartReplica, http: aiohttp.ClientSession, sim: SimulatedUpstream
) -> None:
    """Bodies over MAX_BODY_BYTES get 413, declared by Content-Length or streamed in chunks."""
    replica = await start_replica(max_body_bytes=1000)
    async with http.post(f"{replica.proxy_url}/echo", data=b"x" * 1001) as resp:
        assert resp.status == 413
        assert (await resp.json())["error"]["code"] == "request_too_large"

    async def chunks():  # no Content-Length: sent chunked
        for _ in range(5):
            yield b"y" * 400

    async with http.post(f"{replica.proxy_url}/echo", data=chunks()) as resp:
        assert resp.status == 413
    async with http.post(f"{replica.proxy_url}/echo", data=b"x" * 1000) as resp:
        assert resp.status == 200


async def test_proxy_api_keys(start_replica: StartReplica, http: aiohttp.ClientSession) -> None:
    """With PROXY_API_KEYS, no or a wrong key gets 401 JSON; a right one passes and stays here."""
    replica = await start_replica(proxy_api_keys="k1,k2")
    async with http.get(f"{replica.proxy_url}/echo") as resp:
        assert resp.status == 401
        assert (await resp.json())["error"]["code"] == "invalid_api_key"
    async with http.get(f"{replica.proxy_url}/echo", headers={"Authorization": "Bearer k3"}) as r:
        assert r.status == 401
    seen = header_map(await echo(http, f"{replica.proxy_url}/echo", headers={"X-Api-Key": "k2"}))
    assert "x-api-key" not in seen
    seen = header_map(
        await echo(http, f"{replica.proxy_url}/echo", headers={"Authorization": "Bearer k1"})
    )
    assert seen["authorization"].startswith("Bearer secret-")


async def test_unreachable_upstream_is_502_json(
    start_replica: StartReplica, http: aiohttp.ClientSession
) -> None:
    """Connection refused on every attempt ends in a 502 JSON error, and counts as network."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    replica = await start_replica(upstream_url=dead)
    async with http.get(f"{replica.proxy_url}/echo") as resp:
        assert resp.status == 502
        assert (await resp.json())["error"]["code"] == "upstream_unreachable"
    states = [await replica.replica.pool.session_state(n) for n in "abc"]
    assert sum(int(s.get("n_network", 0)) for s in states) == 3


async def test_ops_endpoints(start_replica: StartReplica, http: aiohttp.ClientSession) -> None:
    """healthz, readyz and version answer on the ops port, never on the proxy port."""
    replica = await start_replica()
    for path in ("/healthz", "/readyz", "/version"):
        async with http.get(replica.ops_url + path) as resp:
            assert resp.status == 200, path
    async with http.get(replica.ops_url + "/version") as resp:
        assert (await resp.json())["name"] == "session-broker"
    async with http.get(replica.proxy_url + "/healthz") as resp:
        assert resp.status == 404  # the upstream's answer: that path belongs to it
