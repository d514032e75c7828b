"""The floor of this stack: a bare aiohttp pass-through, the baseline of the replica's throughput
bar (issue 17). An aiohttp server whose one route forwards each request to the upstream through
one pooled ``aiohttp.ClientSession`` and returns the answer; no broker, no lease, no header
policy, no metrics, no logs. It runs on the event loop the replica runs on by default (uvloop,
when installed), so the two differ only in what the replica does on top.

With ``--redis-url``, it also takes a lease for each request before forwarding it and releases
it after (``Pool.acquire``; releases batched per turn of the event loop with
``Pool.release_many``, as a replica sends them) on a pool of its own (``--pool``, ``--sessions``
sessions): the broker calls and nothing else of a replica, which splits the replica's cost into
the broker calls' and the rest of its request path.

``python -m bench.passthrough --port 8090 --upstream http://127.0.0.1:8000``; ``GET
/-/ready`` answers 200 once it serves.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import AsyncIterator, Sequence

import aiohttp
from aiohttp import web

from bench.processes import serve_until_signalled
from broker import BrokerSettings, Outcome, Pool, Release, Session, open_store

#: Request headers not passed on: they describe the client's connection, not the message.
DROPPED = frozenset({"host", "connection", "keep-alive", "transfer-encoding", "content-length"})


class PassThrough:
    """Forwards every request to ``upstream_url`` with a pooled client; with ``broker`` (a pool
    and its sessions), each on a lease of that pool."""

    def __init__(self, upstream_url: str, broker: Brokered | None = None) -> None:
        self.upstream_url = upstream_url.rstrip("/")
        self.client: aiohttp.ClientSession | None = None
        self.broker = broker

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/-/ready", self._ready)
        app.router.add_route("*", "/{path:.*}", self._forward)
        app.cleanup_ctx.append(self._client_ctx)
        return app

    async def _client_ctx(self, app: web.Application) -> AsyncIterator[None]:
        # The replica's client, less what only a proxy of credentials needs.
        connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=30)
        self.client = aiohttp.ClientSession(connector=connector, auto_decompress=False)
        if self.broker is not None:
            await self.broker.start()
        yield
        await self.client.close()
        if self.broker is not None:
            await self.broker.close()

    async def _ready(self, request: web.Request) -> web.Response:
        return web.Response(text="ready")

    async def _forward(self, request: web.Request) -> web.Response:
        assert self.client is not None
        if self.broker is not None:
            lease = await self.broker.pool.acquire()
            try:
                return await self._pass(request)
            finally:
                self.broker.release(Release(lease, Outcome.SUCCESS))
        return await self._pass(request)

    async def _pass(self, request: web.Request) -> web.Response:
        assert self.client is not None
        body = await request.read()
        headers = {k: v for k, v in request.headers.items() if k.lower() not in DROPPED}
        async with self.client.request(
            request.method,
            self.upstream_url + request.rel_url.raw_path_qs,
            headers=headers,
            data=body,
            allow_redirects=False,
        ) as upstream:
            payload = await upstream.read()
            return web.Response(
                status=upstream.status, body=payload, content_type=upstream.content_type
            )


class Brokered:
    """A pool of ``sessions`` sessions on the store at ``redis_url``; releases leave together on
    the turn of the event loop after they were handed over."""

    def __init__(self, redis_url: str, pool: str, sessions: int) -> None:
        settings = BrokerSettings(redis_url=redis_url, pool=pool)
        self.pool = Pool(open_store(settings), settings)
        self.sessions = [Session(id=f"{pool}-{i}", secret="unused") for i in range(sessions)]
        self._pending: list[Release] = []
        self._sending: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        await self.pool.sync(self.sessions)

    def release(self, release: Release) -> None:
        if not self._pending:
            task = asyncio.ensure_future(self._send())
            self._sending.add(task)
            task.add_done_callback(self._sending.discard)
        self._pending.append(release)

    async def _send(self) -> None:
        pending, self._pending = self._pending, []
        await self.pool.release_many(pending)

    async def close(self) -> None:
        if self._sending:
            await asyncio.wait(self._sending)
        await self.pool.leave()
        await self.pool.redis.aclose()


async def serve(upstream_url: str, host: str, port: int, broker: Brokered | None = None) -> None:
    """Serve until SIGTERM or SIGINT."""
    await serve_until_signalled(PassThrough(upstream_url, broker).app(), host, port)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.passthrough", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True)
    parser.add_argument(
        "--event-loop", choices=("uvloop", "asyncio"), default="uvloop", help="as EVENT_LOOP"
    )
    parser.add_argument("--redis-url", help="take a lease per request from this store")
    parser.add_argument("--pool", default="passthrough", help="with --redis-url: its pool")
    parser.add_argument("--sessions", type=int, default=10, help="with --redis-url: its size")
    args = parser.parse_args(argv)
    broker = Brokered(args.redis_url, args.pool, args.sessions) if args.redis_url else None
    main_coroutine = serve(args.upstream, args.host, args.port, broker)
    if args.event_loop == "uvloop":
        try:
            import uvloop
        except ImportError:
            pass
        else:
            uvloop.run(main_coroutine)
            return 0
    asyncio.run(main_coroutine)
    return 0


if __name__ == "__main__":
    sys.exit(main())
