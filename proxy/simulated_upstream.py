"""A simulated upstream API that enforces per-credential limits exactly, for the demo and tests.

With ``ratelimit_headers`` each answer under an rpm limit carries OpenAI-style
``x-ratelimit-remaining-requests`` / ``x-ratelimit-reset-requests``.

Routes: ``POST /v1/chat/completions`` (OpenAI-shaped JSON, or server-sent events with
``"stream": true``), ``GET /sse`` (``?events=N&interval=seconds``), ``* /echo`` (what arrived:
method, path, query, headers, body size) and ``GET /_sim/stats``. Every attempt is counted per
credential and status, so waste is measured where it happens, not guessed at the proxy.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import math
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from aiohttp import web
from aiohttp.typedefs import Handler


@dataclass(frozen=True, slots=True)
class Limits:
    """Per-credential limits: ``rpm`` with a bucket of ``burst``, and concurrent requests."""

    rpm: float | None = None
    burst: int = 1
    max_concurrency: int | None = None


@dataclass(slots=True)
class Forced:
    """A fixed answer for one credential (a revoked key, an outage, a scripted 429)."""

    status: int
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class CredentialStats:
    statuses: Counter[int] = field(default_factory=Counter)
    in_flight: int = 0
    max_in_flight: int = 0
    tokens: float = 0.0
    refilled_at: float = 0.0


class SimulatedUpstream:
    """The simulated API. ``credential_header``/``prefix`` say where the credential arrives."""

    def __init__(
        self,
        *,
        limits: Mapping[str, Limits] | None = None,
        latency_s: float = 0.0,
        retry_after_form: Literal["seconds", "http-date"] = "seconds",
        credential_header: str = "Authorization",
        credential_prefix: str = "Bearer ",
        ratelimit_headers: bool = False,
    ) -> None:
        self.limits = dict(limits or {})
        self.latency_s = latency_s
        self.retry_after_form = retry_after_form
        self.credential_header = credential_header
        self.credential_prefix = credential_prefix
        self.ratelimit_headers = ratelimit_headers
        self.forced: dict[str, Forced] = {}
        self.stats: dict[str, CredentialStats] = {}

    def force(self, credential: str, status: int, headers: Mapping[str, str] | None = None) -> None:
        self.forced[credential] = Forced(status, dict(headers or {}))

    def unforce(self, credential: str) -> None:
        self.forced.pop(credential, None)

    def attempts(self, credential: str, status: int | None = None) -> int:
        stats = self.stats.get(credential)
        if stats is None:
            return 0
        return stats.statuses.total() if status is None else stats.statuses[status]

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._gate])
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_get("/sse", self._sse)
        app.router.add_route("*", "/echo", self._echo)
        app.router.add_get("/_sim/stats", self._stats)
        return app

    def _credential(self, request: web.Request) -> str | None:
        value = request.headers.get(self.credential_header, "")
        if not value.startswith(self.credential_prefix):
            return None
        return value[len(self.credential_prefix) :] or None

    def _retry_after(self, wait_s: float) -> str:
        seconds = max(1, math.ceil(wait_s))
        if self.retry_after_form == "http-date":
            return email.utils.formatdate(time.time() + seconds, usegmt=True)
        return str(seconds)

    def _take_token(self, stats: CredentialStats, limits: Limits) -> float:
        """0 if a request may pass now, else the seconds until it may."""
        if limits.rpm is None:
            return 0.0
        now = time.monotonic()
        rate = limits.rpm / 60.0
        if stats.refilled_at == 0.0:
            stats.tokens = float(limits.burst)
        else:
            stats.tokens = min(float(limits.burst), stats.tokens + (now - stats.refilled_at) * rate)
        stats.refilled_at = now
        if stats.tokens >= 1.0:
            stats.tokens -= 1.0
            return 0.0
        return (1.0 - stats.tokens) / rate

    @web.middleware
    async def _gate(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path == "/_sim/stats":
            return await handler(request)
        credential = self._credential(request)
        if credential is None:
            return web.json_response({"error": {"message": "no credential"}}, status=401)
        stats = self.stats.setdefault(credential, CredentialStats())
        response = await self._admit(request, handler, credential, stats)
        stats.statuses[response.status] += 1
        return response

    async def _admit(
        self,
        request: web.Request,
        handler: Handler,
        credential: str,
        stats: CredentialStats,
    ) -> web.StreamResponse:
        forced = self.forced.get(credential)
        if forced is not None:
            body = {"error": {"message": f"forced {forced.status}"}}
            return web.json_response(body, status=forced.status, headers=dict(forced.headers))
        limits = self.limits.get(credential, Limits())
        if limits.max_concurrency is not None and stats.in_flight >= limits.max_concurrency:
            return self._limited(1.0, "concurrency")
        wait_s = self._take_token(stats, limits)
        if wait_s > 0:
            return self._limited(wait_s, "rpm")
        stats.in_flight += 1
        stats.max_in_flight = max(stats.max_in_flight, stats.in_flight)
        try:
            if self.latency_s:
                await asyncio.sleep(self.latency_s)
            response = await handler(request)
        finally:
            stats.in_flight -= 1
        if self.ratelimit_headers and limits.rpm is not None and not response.prepared:
            response.headers.update(self._quota_headers(stats, limits))
        return response

    def _quota_headers(self, stats: CredentialStats, limits: Limits) -> dict[str, str]:
        """OpenAI-style headers: requests left now, and the time until one more is allowed."""
        assert limits.rpm is not None
        until_next = max(0.0, (1.0 - stats.tokens) / (limits.rpm / 60.0))
        return {
            "x-ratelimit-limit-requests": f"{limits.rpm:g}",
            "x-ratelimit-remaining-requests": str(int(stats.tokens)),
            "x-ratelimit-reset-requests": f"{until_next:.3f}s",
        }

    def _limited(self, wait_s: float, which: str) -> web.Response:
        body = {"error": {"message": f"rate limit ({which}) exceeded", "type": "rate_limit"}}
        headers = {"Retry-After": self._retry_after(wait_s)}
        return web.json_response(body, status=429, headers=headers)

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        try:
            payload = await request.json()
        except ValueError:
            return web.json_response({"error": {"message": "body is not JSON"}}, status=400)
        if not isinstance(payload, dict):
            return web.json_response({"error": {"message": "body is not an object"}}, status=400)
        if payload.get("stream"):
            return await self._events(request, count=5, interval_s=0.01)
        answer = {
            "id": "chatcmpl-sim",
            "object": "chat.completion",
            "model": payload.get("model", "sim"),
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6},
        }
        return web.json_response(answer)

    async def _sse(self, request: web.Request) -> web.StreamResponse:
        count = int(request.query.get("events", "5"))
        interval = float(request.query.get("interval", "0.05"))
        return await self._events(request, count=count, interval_s=interval)

    async def _events(
        self, request: web.Request, *, count: int, interval_s: float
    ) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for index in range(count):
            event = {"choices": [{"index": 0, "delta": {"content": f"chunk {index}"}}]}
            await response.write(f"data: {json.dumps(event)}\n\n".encode())
            await asyncio.sleep(interval_s)
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    async def _echo(self, request: web.Request) -> web.Response:
        body = await request.read()
        return web.json_response(
            {
                "method": request.method,
                "path": request.path,
                "raw_path": request.raw_path,
                "headers": [[k, v] for k, v in request.headers.items()],
                "body_bytes": len(body),
            }
        )

    async def _stats(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                credential: {
                    "statuses": {str(k): v for k, v in stats.statuses.items()},
                    "max_in_flight": stats.max_in_flight,
                }
                for credential, stats in self.stats.items()
            }
        )
