"""A simulated upstream API that enforces per-credential limits exactly, for the demo, the tests
and the fleet benchmark (``bench/fleet.py``).

Per credential: an rpm limit, a cap on concurrent requests and a ``tpm`` budget of units
(tokens), each answered 429 with ``Retry-After`` (delta-seconds or HTTP-date) when exceeded, or
with no header at all (``headerless_429``: what a web app's private API sends). The rpm limit
has one of two shapes: a token bucket of ``burst`` refilled at rpm/60 a second, or a fixed window
(rpm x window/60 requests per window, the count starting over at each window's edge, as counters
keyed by the calendar minute do). Its ``schedule`` may change it during the run (the limit halves
at 60 s and is restored at 120 s, say), on the clock the faults use. With ``ratelimit_headers``
each answer under an rpm limit carries OpenAI-style ``x-ratelimit-{limit,remaining,reset}-
requests`` (the rpm in force), under a tpm ``x-ratelimit-{limit,remaining,reset}-tokens``. A
``Latency`` distribution sets the service time of admitted requests; ``Faults`` inject failures
per credential: 5xx at random or in periodic bursts (a flaky credential: ``burst_every_s`` 6,
``burst_for_s`` 2), connection resets, a revoked credential (401), a slow one.

The tpm budget is the broker's GCRA on units (``lua/common.lua``), without its slack: each unit
takes 60/tpm s of the credential's unit schedule, and a request is admitted while the schedule is
at most 60 s ahead of now. It is then charged its estimate at once (``proxy.request.estimate``: the
body's bytes / 4 plus its ``max_tokens``, as OpenAI counts at admission), and when its answer is
complete the charge is settled to the usage the answer reports (an answer that reports none keeps
the estimate). A refund never takes the schedule before now: an unused budget is not banked.

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

Runs as its own process too: ``python -m proxy.testing.upstream --port 8000 --config sim.json``
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

from proxy.request.estimate import estimate_units, prompt_units, requested_max_units

#: The status an attempt is counted under when its connection was reset instead of answered.
RESET = 0
#: The status an attempt is counted under when its caller hung up before the answer (only seen
#: when the server cancels handlers of lost connections, aiohttp's ``handler_cancellation``).
CANCELLED = -1
_STATUS_NAMES = {RESET: "reset", CANCELLED: "cancelled"}
#: The limits a 429 is counted under, in ``snapshot()``'s ``"limited"``.
LIMIT_REASONS = ("concurrency", "rpm", "tpm")
#: How far ahead of now a credential's unit schedule may run: a tpm budget holds one minute.
UNIT_WINDOW_S = 60.0
#: The completion tokens a chat completion reports when its request set no ``max_tokens``.
DEFAULT_COMPLETION_UNITS = 16
#: The two shapes of an rpm limit: a token bucket with ``burst``, or a fixed window.
Shape = Literal["bucket", "window"]


@dataclass(frozen=True, slots=True)
class Limits:
    """Per-credential limits: ``rpm`` (a bucket of ``burst``, or with ``shape="window"``
    rpm x ``window_s``/60 requests per fixed window), concurrent requests, and ``tpm`` units
    (tokens) a minute. ``schedule``: ``(at_s, factor)`` pairs, in order; from ``at_s`` seconds
    after the start (or the last reset) on, the rpm limit is ``factor`` x ``rpm``."""

    rpm: float | None = None
    burst: int = 1
    max_concurrency: int | None = None
    tpm: int | None = None
    shape: Shape = "bucket"
    window_s: float = 60.0
    schedule: tuple[tuple[float, float], ...] = ()

    def factor_at(self, elapsed_s: float) -> float:
        """The factor the schedule applies to ``rpm`` at ``elapsed_s``."""
        factor = 1.0
        for at_s, then in self.schedule:
            if elapsed_s >= at_s:
                factor = then
        return factor

    def rpm_at(self, elapsed_s: float) -> float | None:
        """The rpm limit in force at ``elapsed_s`` (None: no rpm limit)."""
        return None if self.rpm is None else self.rpm * self.factor_at(elapsed_s)

    def per_window(self, elapsed_s: float) -> int:
        """Requests a fixed window starting at ``elapsed_s`` admits."""
        rpm = self.rpm_at(elapsed_s) or 0.0
        return math.floor(rpm * self.window_s / 60.0 + 1e-9)


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
    limited: Counter[str] = field(default_factory=Counter)  # 429s by the limit that answered
    in_flight: int = 0
    max_in_flight: int = 0
    tokens: float = 0.0  # the rpm bucket's
    refilled_at: float = 0.0
    window: int = -1  # the fixed window counted in (its index since the start); -1: none yet
    window_count: int = 0
    unit_tat: float = 0.0  # the tpm schedule (monotonic s); 0: never charged
    units: int = 0  # consumed: every admitted request's charge, as settled


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

    def _take_token(self, stats: CredentialStats, limits: Limits) -> float:
        """0 if a request may pass now, else the seconds until it may."""
        if limits.rpm is None:
            return 0.0
        elapsed = self._elapsed()
        if limits.shape == "window":
            return self._take_from_window(stats, limits, elapsed)
        now = time.monotonic()
        rate = (limits.rpm_at(elapsed) or 0.0) / 60.0
        if rate <= 0:  # a schedule that stops the credential: ask again in a minute
            return 60.0
        if stats.refilled_at == 0.0:
            stats.tokens = float(limits.burst)
        else:
            stats.tokens = min(float(limits.burst), stats.tokens + (now - stats.refilled_at) * rate)
        stats.refilled_at = now
        if stats.tokens >= 1.0:
            stats.tokens -= 1.0
            return 0.0
        return (1.0 - stats.tokens) / rate

    def _take_from_window(self, stats: CredentialStats, limits: Limits, elapsed: float) -> float:
        """The fixed window: 0 if the current window has a request left (taken), else the
        seconds until the next window starts."""
        window = int(elapsed // limits.window_s)
        if window != stats.window:
            stats.window, stats.window_count = window, 0
        if stats.window_count < limits.per_window(window * limits.window_s):
            stats.window_count += 1
            return 0.0
        return (window + 1) * limits.window_s - elapsed

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
            self._count(stats, RESET)
            _reset_connection(request)
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
        units_wait_s = self._units_wait(stats, limits)
        if units_wait_s > 0:
            return self._limited(stats, units_wait_s, "tpm", self._quota_headers(stats, limits))
        wait_s = self._take_token(stats, limits)
        if wait_s > 0:
            return self._limited(stats, wait_s, "rpm", self._quota_headers(stats, limits))
        charge = Charge(stats, limits, estimate_units(request_body))
        self._charge_units(stats, limits, charge.estimate)
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
            self._charge_units(stats, limits, charge.reported - charge.estimate)
        return response

    def _units_wait(self, stats: CredentialStats, limits: Limits) -> float:
        """0 if the tpm budget admits a request now, else the seconds until it does."""
        if not limits.tpm:
            return 0.0
        return max(0.0, stats.unit_tat - UNIT_WINDOW_S - time.monotonic())

    def _charge_units(self, stats: CredentialStats, limits: Limits, units: int) -> None:
        """Count ``units`` (a refund when negative), and charge them to the tpm schedule as the
        broker does: from now at the earliest, and never back before now."""
        stats.units += units
        if not limits.tpm or units == 0:
            return
        now = time.monotonic()
        scheduled = max(stats.unit_tat, now) + units * UNIT_WINDOW_S / limits.tpm
        stats.unit_tat = max(scheduled, now)

    async def _add_quota_headers(self, request: web.Request, response: web.StreamResponse) -> None:
        """An admitted request's answer says what is left of its quota, a stream's too (it is
        sent when the stream starts, a JSON answer's once it is settled)."""
        charge = request.get(_CHARGE)
        if charge is not None:
            response.headers.update(self._quota_headers(charge.stats, charge.limits))

    def _quota_headers(self, stats: CredentialStats, limits: Limits) -> dict[str, str]:
        """OpenAI-style headers: requests and tokens left now, and the time until one more
        request is allowed or the whole token budget is back."""
        headers: dict[str, str] = {}
        if not self.ratelimit_headers:
            return headers
        if limits.rpm is not None:
            headers.update(self._request_headers(stats, limits))
        if limits.tpm:
            ahead_s = max(0.0, stats.unit_tat - time.monotonic())
            remaining = math.floor((UNIT_WINDOW_S - ahead_s) * limits.tpm / UNIT_WINDOW_S)
            headers["x-ratelimit-limit-tokens"] = str(limits.tpm)
            headers["x-ratelimit-remaining-tokens"] = str(max(0, remaining))
            headers["x-ratelimit-reset-tokens"] = f"{ahead_s:.3f}s"
        return headers

    def _request_headers(self, stats: CredentialStats, limits: Limits) -> dict[str, str]:
        """The requests part of the OpenAI-style headers: the rpm in force (per minute, as
        OpenAI states it, whatever the shape), what is left (of the bucket, or of the window) and
        when one more is allowed (a window: when it starts over)."""
        elapsed = self._elapsed()
        rpm = limits.rpm_at(elapsed) or 0.0
        if limits.shape == "window":
            start_s = elapsed // limits.window_s * limits.window_s
            remaining = max(0, limits.per_window(start_s) - stats.window_count)
            until_next = limits.window_s - (elapsed - start_s)
        else:
            remaining = int(stats.tokens)
            until_next = max(0.0, (1.0 - stats.tokens) / (rpm / 60.0)) if rpm > 0 else 60.0
        return {
            "x-ratelimit-limit-requests": f"{rpm:g}",
            "x-ratelimit-remaining-requests": str(remaining),
            "x-ratelimit-reset-requests": f"{until_next:.3f}s",
        }

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
        usage = _usage(await request.read(), self.completion_units)
        response = (
            await self._events(request, count=5, interval_s=0.01, usage=usage)
            if payload.get("stream")
            else web.json_response(_completion(payload, usage))
        )
        charge = request.get(_CHARGE)
        if charge is not None:
            charge.reported = usage["total_tokens"]
        return response

    async def _sse(self, request: web.Request) -> web.StreamResponse:
        count = int(request.query.get("events", "5"))
        interval = float(request.query.get("interval", "0.05"))
        return await self._events(request, count=count, interval_s=interval)

    async def _events(
        self,
        request: web.Request,
        *,
        count: int,
        interval_s: float,
        usage: Mapping[str, int] | None = None,
    ) -> web.StreamResponse:
        """``count`` events, then ``usage`` in a last one as OpenAI sends it with
        ``stream_options.include_usage`` (an empty ``choices``), then ``[DONE]``."""
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for index in range(count):
            event = {"choices": [{"index": 0, "delta": {"content": f"chunk {index}"}}]}
            await response.write(f"data: {json.dumps(event)}\n\n".encode())
            await asyncio.sleep(interval_s)
        if usage is not None:
            last = {"choices": [], "usage": dict(usage)}
            await response.write(f"data: {json.dumps(last)}\n\n".encode())
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

    async def _timeline(self, request: web.Request) -> web.Response:
        return web.json_response({"seconds": self.timeline_snapshot()})

    async def _reset(self, request: web.Request) -> web.Response:
        self.reset()
        return web.json_response({"reset": True})


def _usage(body: bytes, completion_units: int | None) -> dict[str, int]:
    """What a chat completion reports consumed: the body as prompt, ``completion_units`` (at
    most the body's ``max_tokens``) as completion, or without it the ``max_tokens`` (else
    ``DEFAULT_COMPLETION_UNITS``): then equal to the estimate when the body sets one."""
    prompt = prompt_units(body)
    requested = requested_max_units(body)
    if completion_units is not None:
        completion = completion_units if requested is None else min(completion_units, requested)
    else:
        completion = DEFAULT_COMPLETION_UNITS if requested is None else requested
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def _completion(payload: Mapping[str, object], usage: Mapping[str, int]) -> dict[str, object]:
    """An OpenAI-shaped chat completion answering ``payload``."""
    return {
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
        "usage": dict(usage),
    }


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
    tpm: int | None = None
    shape: Shape = "bucket"
    window_s: float = 60.0
    schedule: tuple[tuple[float, float], ...] = ()
    faults: Faults = NO_FAULTS

    @property
    def limits(self) -> Limits:
        return Limits(
            self.rpm,
            self.burst,
            self.max_concurrency,
            self.tpm,
            self.shape,
            self.window_s,
            self.schedule,
        )


@dataclass(frozen=True, slots=True)
class UpstreamConfig:
    """A simulated upstream in a file, for ``python -m proxy.testing.upstream --config``::

    {"credentials": {"sk-1": {"rpm": 120, "burst": 2, "tpm": 40000},
                     "sk-2": {"rpm": 60, "faults": {"burst_every_s": 10, "burst_for_s": 2}},
                     "sk-3": {"rpm": 120, "shape": "window", "window_s": 60,
                              "schedule": [[60, 0.5], [120, 1.0]]}},
     "latency": {"distribution": "lognormal", "seconds": 0.05, "spread": 0.5},
     "retry_after_form": "seconds", "ratelimit_headers": true, "headerless_429": false,
     "seed": 1}
    """

    credentials: dict[str, CredentialConfig] = field(default_factory=dict)
    latency: Latency = field(default_factory=Latency)
    retry_after_form: Literal["seconds", "http-date"] = "seconds"
    ratelimit_headers: bool = False
    retry_after_ms: bool = False
    headerless_429: bool = False
    credential_header: str = "Authorization"
    credential_prefix: str = "Bearer "
    completion_units: int | None = None
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
            headerless_429=self.headerless_429,
            completion_units=self.completion_units,
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
        prog="python -m proxy.testing.upstream",
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
