"""The two baselines of the fleet benchmark, as small honest proxies: one process each, as many
processes as the fleet has replicas, the same sessions file, the same retry budget.

``naive`` is the predecessor as it stood: a per-process round-robin cursor, and on any error
(a status >= 400 or a failed connection) the next session at once, up to RETRY_COUNT attempts
(the pool size, at most 10, as ours); nothing is remembered between requests.

``local`` is the checklist's Phase 1 without shared state: the same loop, plus a per-process
cooldown for a session answered 429, until its ``Retry-After`` (seconds or HTTP-date; 60 s when
absent, the checklist's default), skipped while cooling; when every session is cooling the client
gets 429 with a ``Retry-After`` for the earliest end. It knows nothing of rpm quotas, rate-limit
headers, 401s or breakers: those are later phases.

``python -m bench.baselines --mode local --listen 127.0.0.1:8081 --upstream URL
--sessions-file sessions.json``; ``GET /-/ready`` answers 200 once it serves.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import sys
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Literal

import aiohttp
from aiohttp import web

from bench.processes import serve_until_signalled
from broker import Session, load_sessions
from proxy.request.retry_after import retry_after_ms

Mode = Literal["naive", "local"]
#: The checklist's cooldown for a 429 without a usable Retry-After.
DEFAULT_COOLDOWN_S = 60.0
#: Most attempts per request when not given: the pool size, at most this (as the broker's).
MAX_ATTEMPTS = 10
#: Request headers never passed on: hop-by-hop, and the client's own credentials.
DROPPED = frozenset(
    {"host", "connection", "keep-alive", "transfer-encoding", "content-length", "authorization"}
)


class BaselineProxy:
    def __init__(
        self, mode: Mode, upstream_url: str, sessions: Sequence[Session], retry_count: int
    ) -> None:
        self.mode = mode
        self.upstream_url = upstream_url.rstrip("/")
        self.sessions = list(sessions)
        self.retry_count = retry_count
        self.cursor = 0
        self.cooling_until: dict[str, float] = {}
        self.client: aiohttp.ClientSession | None = None

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/-/ready", self._ready)
        app.router.add_route("*", "/{path:.*}", self._handle)
        app.cleanup_ctx.append(self._client_ctx)
        return app

    async def _client_ctx(self, app: web.Application) -> AsyncIterator[None]:
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=5, sock_read=120)
        connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=30)
        self.client = aiohttp.ClientSession(timeout=timeout, connector=connector)
        yield
        await self.client.close()

    async def _ready(self, request: web.Request) -> web.Response:
        return web.json_response({"ready": True, "mode": self.mode})

    def _order(self) -> list[Session]:
        """Sessions in round-robin order from this process's cursor; in ``local`` mode without
        the cooling ones."""
        start = self.cursor
        self.cursor = (self.cursor + 1) % len(self.sessions)
        order = [self.sessions[(start + i) % len(self.sessions)] for i in range(len(self.sessions))]
        if self.mode == "local":
            now = time.monotonic()
            order = [s for s in order if self.cooling_until.get(s.id, 0.0) <= now]
        return order[: self.retry_count]

    def _all_cooling(self) -> web.Response:
        wait = min(self.cooling_until.values()) - time.monotonic()
        body = {"error": {"message": "every session is rate limited", "type": "rate_limit"}}
        headers = {"Retry-After": str(max(1, math.ceil(wait)))}
        return web.json_response(body, status=429, headers=headers)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        assert self.client is not None
        body = await request.read()
        headers = {k: v for k, v in request.headers.items() if k.lower() not in DROPPED}
        order = self._order()
        if not order:
            return self._all_cooling()
        last: web.Response = web.json_response({"error": {"message": "unreachable"}}, status=502)
        for session in order:
            try:
                async with self.client.request(
                    request.method,
                    self.upstream_url + request.rel_url.raw_path_qs,
                    headers={**headers, "Authorization": f"Bearer {session.secret}"},
                    data=body,
                ) as upstream:
                    payload = await upstream.read()
                    answer = web.Response(
                        status=upstream.status,
                        body=payload,
                        content_type=upstream.content_type,
                    )
                    if upstream.status < 400:
                        return answer
                    self._note_failure(session, upstream)
                    last = answer
            except (aiohttp.ClientError, TimeoutError):
                last = web.json_response({"error": {"message": "upstream failed"}}, status=502)
        return last

    def _note_failure(self, session: Session, upstream: aiohttp.ClientResponse) -> None:
        if self.mode != "local" or upstream.status != 429:
            return
        wait_ms = retry_after_ms(upstream.headers, time.time())
        wait_s = DEFAULT_COOLDOWN_S if wait_ms is None else wait_ms / 1000
        self.cooling_until[session.id] = max(
            self.cooling_until.get(session.id, 0.0), time.monotonic() + wait_s
        )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.baselines", description=__doc__)
    parser.add_argument("--mode", choices=["naive", "local"], required=True)
    parser.add_argument("--listen", default="127.0.0.1:8081")
    parser.add_argument("--upstream", required=True)
    parser.add_argument("--sessions-file", type=Path, required=True)
    parser.add_argument("--retry-count", type=int, default=None)
    args = parser.parse_args(argv)
    sessions = load_sessions(secrets=None, path=args.sessions_file)
    retry_count = args.retry_count or min(len(sessions), MAX_ATTEMPTS)
    host, _, port = args.listen.rpartition(":")
    proxy = BaselineProxy(args.mode, args.upstream, sessions, retry_count)
    asyncio.run(serve_until_signalled(proxy.app(), host, int(port)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
