"""A credential's limits in the simulated upstream, the state that enforces them, and the
arithmetic of each limiter: the two shapes of an rpm limit, its schedule, and the tpm budget.

The rpm limit is a token bucket of ``burst`` refilled at rpm/60 a second, or a fixed window
(rpm x window/60 requests per window, the count starting over at each window's edge, as counters
keyed by the calendar minute do). Its ``schedule`` may change it during the run (the limit halves
at 60 s and is restored at 120 s, say), on the clock the faults use.

The tpm budget is the broker's GCRA on units (``lua/common.lua``), without its slack: each unit
takes 60/tpm s of the credential's unit schedule, and a request is admitted while the schedule is
at most 60 s ahead of now. It is then charged its estimate at once (``proxy.request.estimate``: the
body's bytes / 4 plus its ``max_tokens``, as OpenAI counts at admission), and when its answer is
complete the charge is settled to the usage the answer reports (an answer that reports none keeps
the estimate). A refund never takes the schedule before now: an unused budget is not banked.

Every function takes ``elapsed_s``, the seconds since the upstream started (or was last reset),
where the schedule or a window needs it; the bucket and the tpm schedule run on the monotonic
clock.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Literal

__all__ = [
    "UNIT_WINDOW_S",
    "CredentialStats",
    "Limits",
    "Shape",
    "charge_units",
    "quota_headers",
    "take_request",
    "units_wait",
]

#: How far ahead of now a credential's unit schedule may run: a tpm budget holds one minute.
UNIT_WINDOW_S = 60.0
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


@dataclass(slots=True)
class CredentialStats:
    """One credential's counts (what ``SimulatedUpstream.snapshot`` reports) and the state of
    its limiters."""

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


def take_request(stats: CredentialStats, limits: Limits, elapsed_s: float) -> float:
    """0 if a request may pass the rpm limit now (it is counted), else the seconds until it may."""
    if limits.rpm is None:
        return 0.0
    if limits.shape == "window":
        return _take_from_window(stats, limits, elapsed_s)
    now = time.monotonic()
    rate = (limits.rpm_at(elapsed_s) or 0.0) / 60.0
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


def _take_from_window(stats: CredentialStats, limits: Limits, elapsed_s: float) -> float:
    """The fixed window: 0 if the current window has a request left (taken), else the seconds
    until the next window starts."""
    window = int(elapsed_s // limits.window_s)
    if window != stats.window:
        stats.window, stats.window_count = window, 0
    if stats.window_count < limits.per_window(window * limits.window_s):
        stats.window_count += 1
        return 0.0
    return (window + 1) * limits.window_s - elapsed_s


def units_wait(stats: CredentialStats, limits: Limits) -> float:
    """0 if the tpm budget admits a request now, else the seconds until it does."""
    if not limits.tpm:
        return 0.0
    return max(0.0, stats.unit_tat - UNIT_WINDOW_S - time.monotonic())


def charge_units(stats: CredentialStats, limits: Limits, units: int) -> None:
    """Count ``units`` (a refund when negative), and charge them to the tpm schedule as the
    broker does: from now at the earliest, and never back before now."""
    stats.units += units
    if not limits.tpm or units == 0:
        return
    now = time.monotonic()
    scheduled = max(stats.unit_tat, now) + units * UNIT_WINDOW_S / limits.tpm
    stats.unit_tat = max(scheduled, now)


def quota_headers(stats: CredentialStats, limits: Limits, elapsed_s: float) -> dict[str, str]:
    """OpenAI-style headers: requests and tokens left now, and the time until one more
    request is allowed or the whole token budget is back."""
    headers: dict[str, str] = {}
    if limits.rpm is not None:
        headers.update(_request_headers(stats, limits, elapsed_s))
    if limits.tpm:
        ahead_s = max(0.0, stats.unit_tat - time.monotonic())
        remaining = math.floor((UNIT_WINDOW_S - ahead_s) * limits.tpm / UNIT_WINDOW_S)
        headers["x-ratelimit-limit-tokens"] = str(limits.tpm)
        headers["x-ratelimit-remaining-tokens"] = str(max(0, remaining))
        headers["x-ratelimit-reset-tokens"] = f"{ahead_s:.3f}s"
    return headers


def _request_headers(stats: CredentialStats, limits: Limits, elapsed_s: float) -> dict[str, str]:
    """The requests part of the OpenAI-style headers: the rpm in force (per minute, as OpenAI
    states it, whatever the shape), what is left (of the bucket, or of the window) and when one
    more is allowed (a window: when it starts over)."""
    rpm = limits.rpm_at(elapsed_s) or 0.0
    if limits.shape == "window":
        start_s = elapsed_s // limits.window_s * limits.window_s
        remaining = max(0, limits.per_window(start_s) - stats.window_count)
        until_next = limits.window_s - (elapsed_s - start_s)
    else:
        remaining = int(stats.tokens)
        until_next = max(0.0, (1.0 - stats.tokens) / (rpm / 60.0)) if rpm > 0 else 60.0
    return {
        "x-ratelimit-limit-requests": f"{rpm:g}",
        "x-ratelimit-remaining-requests": str(remaining),
        "x-ratelimit-reset-requests": f"{until_next:.3f}s",
    }
