"""The simulated upstream's server: an aiohttp app that admits each request through its
credential's faults and limits, answers it, and counts what happened.

Routes: ``POST /v1/chat/completions`` (OpenAI-shaped JSON, or server-sent events with
``"stream": true``, the last event before ``[DONE]`` carrying the usage), ``GET /sse``
(``?events=N&interval=seconds``), ``* /echo`` (what arrived: method, path, query, headers, body
size), ``GET /_sim/stats``, ``GET /_sim/timeline`` and ``POST /_sim/reset``. A chat completion
reports ``usage``: the body's bytes / 4 as prompt tokens, its ``max_tokens`` (else
``DEFAULT_COMPLETION_UNITS``; or fewer, ``completion_units``) as completion tokens. Every
attempt is counted per credential and status (a reset as ``"reset"``), every 429 by the limit
that answered it, and the units consumed, so waste and budget use are measured where they
happen, not guessed at the proxy; the timeline counts the answers of every credential per second
since the start, so how fast a fleet follows a limit that changes is measured there too.
"""

from __future__ import annotations

import asyncio
import email.utils
import math
import random
import time
from collections import Counter, deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from aiohttp import web
from aiohttp.typedefs import Handler

from proxy.request.estimate import estimate_units
from proxy.testing.upstream.answers import chat_completion, send_events, usage_of
from proxy.testing.upstream.faults import NO_FAULTS, Faults, Latency, reset_connection
from proxy.testing.upstream.limits import (
    CredentialStats,
    Limits,
    charge_units,
    quota_headers,
    take_request,
    units_wait,
)

__all__ = [
    "CANCELLED",
    "LIMIT_REASONS",
    "RESET",
    "Charge",
    "Forced",
    "SimulatedUpstream",
]

#: The status an attempt is counted under when its connection was reset instead of answered.
RESET = 0
#: The status an attempt is counted under when its caller hung up before the answer (only seen
#: when the server cancels handlers of lost connections, aiohttp's ``handler_cancellation``).
CANCELLED = -1
_STATUS_NAMES = {RESET: "reset", CANCELLED: "cancelled"}
#: The limits a 429 is counted under, in ``snapshot()``'s ``"limited"``.
LIMIT_REASONS = ("concurrency", "rpm", "tpm")


@dataclass(slots=True)
class Forced:
    """A fixed answer for one credential (a revoked key, an outage, a scripted 429)."""

    status: int
    headers: Mapping[str, str] = field(default_factory=dict)


#: How many arrivals ``SimulatedUpstream.arrivals`` keeps (the latest): enough for a test's
#: story, bounded for a long benchmark.
ARRIVALS_KEPT = 10_000


@dataclass(frozen=True, slots=True)
class Arrival:
    """One request as it arrived: when (wall clock, s) and with which credential."""

    at_s: float
    credential: str


@dataclass(slots=True)
class Charge:
    """An admitted request's charge: its credential's counts and limits, the units estimated at
    admission, and the units its answer reported (None until it has, or if it never does)."""

    stats: CredentialStats
    limits: Limits
    estimate: int
    reported: int | None = None


_CHARGE = web.RequestKey("sim_charge", Charge)


class SimulatedUpstream:
    """The simulated API. ``credential_header``/``prefix`` say where the credential arrives.

    ``latency_s`` is a fixed service time; ``latency`` a distribution (it wins when given).
    ``retry_after_ms`` adds the precise ``retry-after-ms`` to each 429, as some OpenAI-compatible
    servers do, beside the whole seconds of ``Retry-After``. ``headerless_429``: every 429 comes
    without any header at all (no ``Retry-After``, no rate-limit header), whatever the two above
    say; admitted answers keep their rate-limit headers.
    ``completion_units``: the completion tokens every chat completion reports, at most its
    request's ``max_tokens`` (an answer that stops early: its charge is partly refunded); None
    reports the request's ``max_tokens``, else ``DEFAULT_COMPLETION_UNITS``.
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
        headerless_429: bool = False,
        completion_units: int | None = None,
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
        self.headerless_429 = headerless_429
        self.completion_units = completion_units
        self.forced: dict[str, Forced] = {}
        self.stats: dict[str, CredentialStats] = {}
        #: Answers of every credential per second since the start: second -> status -> count.
        self.timeline: list[Counter[int]] = []
        #: The latest requests that carried a credential, oldest first (see ARRIVALS_KEPT).
        self.arrivals: deque[Arrival] = deque(maxlen=ARRIVALS_KEPT)
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
        """Forget every count, bucket and window, and restart the clock of the faults and of the
        limits' schedules (between benchmark runs)."""
        self.stats.clear()
        self.timeline.clear()
        self.arrivals.clear()
        self.started_at = time.monotonic()

    def attempts(self, credential: str, status: int | None = None) -> int:
        """Attempts that carried ``credential``: all, or those answered ``status`` (or RESET)."""
        stats = self.stats.get(credential)
        if stats is None:
            return 0
        return stats.statuses.total() if status is None else stats.statuses[status]

    def snapshot(self) -> dict[str, dict[str, object]]:
        """Counts per credential: ``statuses`` (status, ``"reset"`` or ``"cancelled"`` ->
        attempts), ``max_in_flight`` (peak concurrency), ``limited`` (each of ``LIMIT_REASONS`` ->
        the 429s it answered) and ``units`` (the units consumed, as charged and settled). What
        ``GET /_sim/stats`` answers."""
        return {
            credential: {
                "statuses": {
                    _STATUS_NAMES.get(status, str(status)): count
                    for status, count in sorted(stats.statuses.items())
                },
                "max_in_flight": stats.max_in_flight,
                "limited": {reason: stats.limited[reason] for reason in LIMIT_REASONS},
                "units": stats.units,
            }
            for credential, stats in self.stats.items()
        }

    def timeline_snapshot(self) -> list[dict[str, int]]:
        """Answers per second since the start, every credential together: for each second a
        status (or ``"reset"``, ``"cancelled"``) -> count. What ``GET /_sim/timeline`` answers
        (as ``{"seconds": [...]}``)."""
        return [
            {_STATUS_NAMES.get(status, str(status)): n for status, n in sorted(second.items())}
            for second in self.timeline
        ]

    def _count(self, stats: CredentialStats, status: int) -> None:
        stats.statuses[status] += 1
        second = int(self._elapsed())
        while len(self.timeline) <= second:
            self.timeline.append(Counter())
        self.timeline[second][status] += 1

    def _elapsed(self) -> float:
        return time.monotonic() - self.started_at

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._gate])
        app.on_response_prepare.append(self._add_quota_headers)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_get("/sse", self._sse)
        app.router.add_route("*", "/echo", self._echo)
        app.router.add_get("/_sim/stats", self._stats)
        app.router.add_get("/_sim/timeline", self._timeline)
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

    @web.middleware
    async def _gate(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path.startswith("/_sim/"):
            return await handler(request)
        credential = self._credential(request)
        if credential is None:
            return web.json_response({"error": {"message": "no credential"}}, status=401)
        self.arrivals.append(Arrival(time.time(), credential))
        stats = self.stats.setdefault(credential, CredentialStats())
        faults = self.faults.get(credential, NO_FAULTS)
        if faults.reset_rate and self.rng.random() < faults.reset_rate:
            self._count(stats, RESET)
            reset_connection(request)
            return web.Response(status=500)  # never sent: the connection is gone
        try:
            response = await self._admit(request, handler, stats, faults, credential)
        except web.HTTPException as exc:  # 404, 405, ... raised by the router
            self._count(stats, exc.status)
            raise
        except asyncio.CancelledError:  # the caller hung up before the answer
            self._count(stats, CANCELLED)
            raise
        self._count(stats, response.status)
        return response

    def _fault(self, faults: Faults) -> int | None:
        """The status a fault answers with now, or None."""
        if faults.revoked:
            return 401
        if faults.in_burst(self._elapsed()):
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
        # Read before any limit is looked at: no await between a limit's check and its charge.
        request_body = await request.read()  # aiohttp keeps it for the handler
        limits = self.limits.get(credential, Limits())
        if limits.max_concurrency is not None and stats.in_flight >= limits.max_concurrency:
            return self._limited(stats, 1.0, "concurrency")
        units_wait_s = units_wait(stats, limits)
        if units_wait_s > 0:
            return self._limited(stats, units_wait_s, "tpm", self._quota_headers(stats, limits))
        wait_s = take_request(stats, limits, self._elapsed())
        if wait_s > 0:
            return self._limited(stats, wait_s, "rpm", self._quota_headers(stats, limits))
        charge = Charge(stats, limits, estimate_units(request_body))
        charge_units(stats, limits, charge.estimate)
        request[_CHARGE] = charge
        stats.in_flight += 1
        stats.max_in_flight = max(stats.max_in_flight, stats.in_flight)
        try:
            delay = self.latency.sample(self.rng) + faults.extra_latency_s
            if delay:
                await asyncio.sleep(delay)
            response = await handler(request)
        finally:
            stats.in_flight -= 1
        if charge.reported is not None:  # settle: the answer is complete, streams too
            charge_units(stats, limits, charge.reported - charge.estimate)
        return response

    async def _add_quota_headers(self, request: web.Request, response: web.StreamResponse) -> None:
        """An admitted request's answer says what is left of its quota, a stream's too (it is
        sent when the stream starts, a JSON answer's once it is settled)."""
        charge = request.get(_CHARGE)
        if charge is not None:
            response.headers.update(self._quota_headers(charge.stats, charge.limits))

    def _quota_headers(self, stats: CredentialStats, limits: Limits) -> dict[str, str]:
        """The quota's OpenAI-style headers, when this upstream sends them."""
        if not self.ratelimit_headers:
            return {}
        return quota_headers(stats, limits, self._elapsed())

    def _limited(
        self,
        stats: CredentialStats,
        wait_s: float,
        which: str,
        extra: Mapping[str, str] | None = None,
    ) -> web.Response:
        stats.limited[which] += 1
        body = {"error": {"message": f"rate limit ({which}) exceeded", "type": "rate_limit"}}
        if self.headerless_429:
            return web.json_response(body, status=429)
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
        usage = usage_of(await request.read(), self.completion_units)
        response = (
            await send_events(request, count=5, interval_s=0.01, usage=usage)
            if payload.get("stream")
            else web.json_response(chat_completion(payload, usage))
        )
        charge = request.get(_CHARGE)
        if charge is not None:
            charge.reported = usage["total_tokens"]
        return response

    async def _sse(self, request: web.Request) -> web.StreamResponse:
        count = int(request.query.get("events", "5"))
        interval = float(request.query.get("interval", "0.05"))
        return await send_events(request, count=count, interval_s=interval)

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

    async def _timeline(self, request: web.Request) -> web.Response:
        return web.json_response({"seconds": self.timeline_snapshot()})

    async def _reset(self, request: web.Request) -> web.Response:
        self.reset()
        return web.json_response({"reset": True})
