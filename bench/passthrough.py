"""The floor of this stack: a bare aiohttp pass-through, the baseline of the replica's throughput
bar (issue 17). An aiohttp server whose one route forwards each request to the upstream through
one pooled ``aiohttp.ClientSession`` and returns the answer; no broker, no lease, no header
policy, no metrics, no logs. It runs on the event loop the replica runs on by default (uvloop,
when installed), so the two differ only in what the replica does on top.

``python -m bench.passthrough --port 8090 --upstream http://127.0.0.1:8000``; ``GET
/-/ready`` answers 200 once it serves.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import AsyncIterator, Sequence

import aiohttp
from aiohttp import web

#: Request headers not passed on: they describe the client's connection, not the message.
DROPPED = frozenset({"host", "connection", "keep-alive", "transfer-encoding", "content-length"})


class PassThrough:
    """Forwards every request to ``upstream_url`` with a pooled client."""

    def __init__(self, upstream_url: str) -> None:
        self.upstream_url = upstream_url.rstrip("/")
        self.client: aiohttp.ClientSession | None = None

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
        yield
        await self.client.close()

    async def _ready(self, request: web.Request) -> web.Response:
        return web.Response(text="ready")

    async def _forward(self, request: web.Request) -> web.Response:
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


async def serve(upstream_url: str, host: str, port: int) -> None:
    """Serve until SIGTERM or SIGINT."""
    runner = web.AppRunner(PassThrough(upstream_url).app(), access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    await stopping.wait()
    await runner.cleanup()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.passthrough", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True)
    parser.add_argument(
        "--event-loop", choices=("uvloop", "asyncio"), default="uvloop", help="as EVENT_LOOP"
    )
    args = parser.parse_args(argv)
    main_coroutine = serve(args.upstream, args.host, args.port)
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
