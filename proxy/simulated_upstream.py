"""A simulated upstream API that enforces per-credential limits exactly, for the demo, the tests
and the fleet benchmark (``bench/fleet.py``).

Per credential: an rpm limit with a bucket of ``burst`` and a cap on concurrent requests, each
answered 429 with ``Retry-After`` (delta-seconds or HTTP-date) when exceeded. With
``ratelimit_headers`` each answer under an rpm limit carries OpenAI-style
``x-ratelimit-remaining-requests`` / ``x-ratelimit-reset-requests``. A ``Latency`` distribution
sets the service time of admitted requests; ``Faults`` inject failures per credential: 5xx at
random or in periodic bursts, connection resets, a revoked credential (401), a slow one.

Routes: ``POST /v1/chat/completions`` (OpenAI-shaped JSON, or server-sent events with
``"stream": true``), ``GET /sse`` (``?events=N&interval=seconds``), ``* /echo`` (what arrived:
method, path, query, headers, body size), ``GET /_sim/stats`` and ``POST /_sim/reset``. Every
attempt is counted per credential and status (a reset as ``"reset"``), so waste is measured where
it happens, not guessed at the proxy.

Runs as its own process too: ``python -m proxy.simulated_upstream --port 8000 --config sim.json``
(the file is an ``UpstreamConfig`` in JSON; see its docstring).
"""

from __future__ import annotations

import argparse
import asyncio
import email.utils
import json
import math
import random
import signal
import socket
import struct
import sys
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import msgspec
from aiohttp import web
from aiohttp.typedefs import Handler

#: The status an attempt is counted under when its connection was reset instead of answered.
RESET = 0
#: The status an attempt is counted under when its caller hung up before the answer (only seen
#: when the server cancels handlers of lost connections, aiohttp's ``handler_cancellation``).
CANCELLED = -1
_STATUS_NAMES = {RESET: "reset", CANCELLED: "cancelled"}


@dataclass(frozen=True, slots=True)
class Limits:
    """Per-credential limits: ``rpm`` with a bucket of ``burst``, and concurrent requests."""

    rpm: float | None = None
    burst: int = 1
    max_concurrency: int | None = None


@dataclass(frozen=True, slots=True)
class Latency:
    """Service time of an admitted request, in seconds, never above ``max_s``.

    ``fixed``: ``seconds``. ``uniform``: ``seconds`` +/- ``spread`` x ``seconds``.
    ``exponential``: mean ``seconds``. ``lognormal``: median ``seconds``, shape ``spread`` (the
    sigma of its logarithm; 0.5 puts p99 at about 3.2 x the median).
    """

    distribution: Literal["fixed", "uniform", "exponential", "lognormal"] = "fixed"
    seconds: float = 0.0
    spread: float = 0.0
    max_s: float = 60.0

    def sample(self, rng: random.Random) -> float:
        if self.seconds <= 0:
            return 0.0
        if self.distribution == "uniform":
            value = rng.uniform(self.seconds * (1 - self.spread), self.seconds * (1 + self.spread))
        elif self.distribution == "exponential":
            value = rng.expovariate(1 / self.seconds)
        elif self.distribution == "lognormal":
            value = rng.lognormvariate(math.log(self.seconds), self.spread)
        else:
            value = self.seconds
        return min(max(0.0, value), self.max_s)


@dataclass(frozen=True, slots=True)
class Faults:
    """Failures injected for one credential, decided before its limits (they cost no quota).

    ``revoked``: every attempt gets 401. ``error_rate``: that fraction of attempts gets
    ``error_status``. ``burst_every_s`` / ``burst_for_s``: for the first ``burst_for_s`` seconds
    of every ``burst_every_s`` (counted from ``burst_offset_s`` after the start or the last reset)
    every attempt gets ``error_status``. ``reset_rate``: that fraction of attempts has its
    connection reset without an answer. ``extra_latency_s``: added to every admitted request (a
    slow credential).
    """

    revoked: bool = False
    error_rate: float = 0.0
    error_status: int = 503
    burst_every_s: float = 0.0
    burst_for_s: float = 0.0
    burst_offset_s: float = 0.0
    reset_rate: float = 0.0
    extra_latency_s: float = 0.0

    def in_burst(self, elapsed_s: float) -> bool:
        if self.burst_every_s <= 0 or self.burst_for_s <= 0 or elapsed_s < self.burst_offset_s:
            return False
        return (elapsed_s - self.burst_offset_s) % self.burst_every_s < self.burst_for_s


NO_FAULTS = Faults()


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
    """The simulated API. ``credential_header``/``prefix`` say where the credential arrives.

    ``latency_s`` is a fixed service time; ``latency`` a distribution (it wins when given).
    ``retry_after_ms`` adds the precise ``retry-after-ms`` to each 429, as some OpenAI-compatible
    servers do, beside the whole seconds of ``Retry-After``.
    ``seed`` makes the latencies and random faults repeatable.
    """

    def __init__(
        self,
        *,
        limits: Mapping[str, Limits] | None = None,
        latency_s: float = 0.0,
        latency: Latency | None = None,
        faults: Mapping[str, Faults] | None = None,
        retry_after_form: Literal["seconds", "http-date"] = "seconds",
        credential_header: str = "Authorization",
        credential_prefix: str = "Bearer ",
        ratelimit_headers: bool = False,
        retry_after_ms: bool = False,
        seed: int | None = None,
    ) -> None:
        self.limits = dict(limits or {})
        self.latency = latency or Latency("fixed", latency_s)
        self.faults = dict(faults or {})
        self.retry_after_form = retry_after_form
        self.credential_header = credential_header
        self.credential_prefix = credential_prefix
        self.ratelimit_headers = ratelimit_headers
        self.retry_after_ms = retry_after_ms
        self.forced: dict[str, Forced] = {}
        self.stats: dict[str, CredentialStats] = {}
        self.rng = random.Random(seed)
        self.started_at = time.monotonic()

    @property
    def latency_s(self) -> float:
        """The typical service time (the fixed one, or the distribution's ``seconds``)."""
        return self.latency.seconds

    @latency_s.setter
    def latency_s(self, seconds: float) -> None:
        """Make the service time fixed at ``seconds`` from now on."""
        self.latency = Latency("fixed", seconds)

    def force(self, credential: str, status: int, headers: Mapping[str, str] | None = None) -> None:
        self.forced[credential] = Forced(status, dict(headers or {}))

    def unforce(self, credential: str) -> None:
        self.forced.pop(credential, None)

    def reset(self) -> None:
        """Forget every count and bucket, and restart the fault clock (between benchmark runs)."""
        self.stats.clear()
        self.started_at = time.monotonic()

    def attempts(self, credential: str, status: int | None = None) -> int:
        """Attempts that carried ``credential``: all, or those answered ``status`` (or RESET)."""
        stats = self.stats.get(credential)
        if stats is None:
            return 0
        return stats.statuses.total() if status is None else stats.statuses[status]

    def snapshot(self) -> dict[str, dict[str, object]]:
        """Counts per credential: ``statuses`` (status, ``"reset"`` or ``"cancelled"`` ->
        attempts), peak
        concurrency. What ``GET /_sim/stats`` answers."""
        return {
            credential: {
                "statuses": {
                    _STATUS_NAMES.get(status, str(status)): count
                    for status, count in sorted(stats.statuses.items())
                },
                "max_in_flight": stats.max_in_flight,
            }
            for credential, stats in self.stats.items()
        }

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._gate])
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_get("/sse", self._sse)
        app.router.add_route("*", "/echo", self._echo)
        app.router.add_get("/_sim/stats", self._stats)
        app.router.add_post("/_sim/reset", self._reset)
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
        if request.path.startswith("/_sim/"):
            return await handler(request)
        credential = self._credential(request)
        if credential is None:
            return web.json_response({"error": {"message": "no credential"}}, status=401)
        stats = self.stats.setdefault(credential, CredentialStats())
        faults = self.faults.get(credential, NO_FAULTS)
        if faults.reset_rate and self.rng.random() < faults.reset_rate:
            stats.statuses[RESET] += 1
            _reset_connection(request)
            return web.Response(status=500)  # never sent: the connection is gone
        try:
            response = await self._admit(request, handler, stats, faults, credential)
        except web.HTTPException as exc:  # 404, 405, ... raised by the router
            stats.statuses[exc.status] += 1
            raise
        except asyncio.CancelledError:  # the caller hung up before the answer
            stats.statuses[CANCELLED] += 1
            raise
        stats.statuses[response.status] += 1
        return response

    def _fault(self, faults: Faults) -> int | None:
        """The status a fault answers with now, or None."""
        if faults.revoked:
            return 401
        if faults.in_burst(time.monotonic() - self.started_at):
            return faults.error_status
        if faults.error_rate and self.rng.random() < faults.error_rate:
            return faults.error_status
        return None

    async def _admit(
        self,
        request: web.Request,
        handler: Handler,
        stats: CredentialStats,
        faults: Faults,
        credential: str,
    ) -> web.StreamResponse:
        forced = self.forced.get(credential)
        if forced is not None:
            body = {"error": {"message": f"forced {forced.status}"}}
            return web.json_response(body, status=forced.status, headers=dict(forced.headers))
        failed = self._fault(faults)
        if failed is not None:
            body = {"error": {"message": f"simulated {failed}", "type": "simulated_fault"}}
            return web.json_response(body, status=failed)
        limits = self.limits.get(credential, Limits())
        if limits.max_concurrency is not None and stats.in_flight >= limits.max_concurrency:
            return self._limited(1.0, "concurrency")
        wait_s = self._take_token(stats, limits)
        if wait_s > 0:
            return self._limited(wait_s, "rpm", self._quota_headers(stats, limits))
        stats.in_flight += 1
        stats.max_in_flight = max(stats.max_in_flight, stats.in_flight)
        try:
            delay = self.latency.sample(self.rng) + faults.extra_latency_s
            if delay:
                await asyncio.sleep(delay)
            response = await handler(request)
        finally:
            stats.in_flight -= 1
        if limits.rpm is not None and not response.prepared:
            response.headers.update(self._quota_headers(stats, limits))
        return response

    def _quota_headers(self, stats: CredentialStats, limits: Limits) -> dict[str, str]:
        """OpenAI-style headers: requests left now, and the time until one more is allowed."""
        if not self.ratelimit_headers or limits.rpm is None:
            return {}
        until_next = max(0.0, (1.0 - stats.tokens) / (limits.rpm / 60.0))
        return {
            "x-ratelimit-limit-requests": f"{limits.rpm:g}",
            "x-ratelimit-remaining-requests": str(int(stats.tokens)),
            "x-ratelimit-reset-requests": f"{until_next:.3f}s",
        }

    def _limited(
        self, wait_s: float, which: str, extra: Mapping[str, str] | None = None
    ) -> web.Response:
        body = {"error": {"message": f"rate limit ({which}) exceeded", "type": "rate_limit"}}
        headers = {**(extra or {}), "Retry-After": self._retry_after(wait_s)}
        if self.retry_after_ms:
            headers["retry-after-ms"] = str(math.ceil(wait_s * 1000))
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
            "created": int(time.time()),
            "model": payload.get("model", "sim"),
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "ok"},
                    "finish_reason": "stop",
                }
            ],
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
        return web.json_response(self.snapshot())

    async def _reset(self, request: web.Request) -> web.Response:
        self.reset()
        return web.json_response({"reset": True})


def _reset_connection(request: web.Request) -> None:
    """Drop the client's connection with a TCP RST (SO_LINGER 0), as a crashing server would."""
    transport = request.transport
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


# -- as its own process ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CredentialConfig:
    """One credential's limits and faults, as written in a config file."""

    rpm: float | None = None
    burst: int = 1
    max_concurrency: int | None = None
    faults: Faults = NO_FAULTS

    @property
    def limits(self) -> Limits:
        return Limits(self.rpm, self.burst, self.max_concurrency)


@dataclass(frozen=True, slots=True)
class UpstreamConfig:
    """A simulated upstream in a file, for ``python -m proxy.simulated_upstream --config``::

    {"credentials": {"sk-1": {"rpm": 120, "burst": 2},
                     "sk-2": {"rpm": 60, "faults": {"burst_every_s": 10, "burst_for_s": 2}}},
     "latency": {"distribution": "lognormal", "seconds": 0.05, "spread": 0.5},
     "retry_after_form": "seconds", "ratelimit_headers": true, "seed": 1}
    """

    credentials: dict[str, CredentialConfig] = field(default_factory=dict)
    latency: Latency = field(default_factory=Latency)
    retry_after_form: Literal["seconds", "http-date"] = "seconds"
    ratelimit_headers: bool = False
    retry_after_ms: bool = False
    credential_header: str = "Authorization"
    credential_prefix: str = "Bearer "
    seed: int | None = None

    @classmethod
    def from_json(cls, text: str | bytes) -> UpstreamConfig:
        return msgspec.json.decode(text, type=cls)

    def to_json(self) -> bytes:
        return msgspec.json.encode(self)

    def build(self) -> SimulatedUpstream:
        return SimulatedUpstream(
            limits={name: c.limits for name, c in self.credentials.items()},
            latency=self.latency,
            faults={name: c.faults for name, c in self.credentials.items()},
            retry_after_form=self.retry_after_form,
            credential_header=self.credential_header,
            credential_prefix=self.credential_prefix,
            ratelimit_headers=self.ratelimit_headers,
            retry_after_ms=self.retry_after_ms,
            seed=self.seed,
        )


async def serve(upstream: SimulatedUpstream, host: str, port: int) -> None:
    """Serve until SIGTERM or SIGINT."""
    runner = web.AppRunner(upstream.app(), access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    upstream.reset()
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    print(f"simulated upstream on http://{host}:{runner.addresses[0][1]}", flush=True)
    await stopping.wait()
    await runner.cleanup()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m proxy.simulated_upstream",
        description="A simulated upstream API enforcing per-credential limits, with faults.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--config", type=Path, help="an UpstreamConfig as JSON")
    args = parser.parse_args(argv)
    try:
        config = (
            UpstreamConfig.from_json(args.config.read_bytes()) if args.config else UpstreamConfig()
        )
    except (OSError, msgspec.ValidationError, msgspec.DecodeError) as exc:
        print(f"simulated upstream: bad --config: {exc}", file=sys.stderr)
        return 2
    asyncio.run(serve(config.build(), args.host, args.port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
