"""The fleet benchmark's scenarios: a pool of sessions with their upstream limits and faults, what
the proxies are told about those limits, and the shape of the offered load.

Every scenario offers load as a multiple of the pool's total quota (the sum of the sessions' rpm),
so a result reads as "goodput / quota" whatever the pool.

Two suites: ``scenarios()``, the fleet benchmark's own (sized by its command line), and
``learning_scenarios()``, the bars of issue 13 (limits nobody states) at the issue's own
parameters, each scenario with its duration, replicas and bar.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from itertools import pairwise
from typing import Literal

from proxy.testing.upstream import (
    NO_FAULTS,
    CredentialConfig,
    Faults,
    Latency,
    Limits,
    Shape,
    UpstreamConfig,
)

#: Service time of the simulated upstream: lognormal, median 50 ms, p99 about 160 ms.
DEFAULT_LATENCY = Latency("lognormal", 0.05, 0.5, max_s=5.0)


@dataclass(frozen=True, slots=True)
class SessionSpec:
    """One credential: its id, its upstream limits and faults."""

    id: str
    rpm: float
    burst: int = 2
    faults: Faults = NO_FAULTS
    #: The upstream's limiter: a token bucket of ``burst``, or a fixed window of ``window_s``.
    shape: Shape = "bucket"
    window_s: float = 60.0
    #: ``(at_s, factor)``: the upstream's limit is factor x rpm from at_s seconds on.
    schedule: tuple[tuple[float, float], ...] = ()

    @property
    def secret(self) -> str:
        return f"sk-sim-{self.id}"

    @property
    def per_s(self) -> float:
        return self.rpm / 60.0

    @property
    def limits(self) -> Limits:
        return Limits(
            self.rpm, self.burst, shape=self.shape, window_s=self.window_s, schedule=self.schedule
        )

    def allowed(self, start_s: float, end_s: float) -> float:
        """The most successes the upstream allows in [start_s, end_s) of the run: a bucket's
        rate over the time (as scheduled), plus its full bucket when the span starts the run; a
        window's count for every window that starts in the span."""
        limits = self.limits
        if self.shape == "window":
            first = math.ceil(start_s / self.window_s - 1e-9)
            starts = [i * self.window_s for i in range(first, math.ceil(end_s / self.window_s))]
            return float(sum(limits.per_window(at) for at in starts if at < end_s))
        edges = sorted({start_s, end_s, *(at for at, _ in self.schedule if start_s < at < end_s)})
        total = sum((limits.rpm_at(a) or 0.0) / 60.0 * (b - a) for a, b in pairwise(edges))
        return total + (self.burst if start_s <= 0 else 0)


@dataclass(frozen=True, slots=True)
class Load:
    """Open-loop arrivals at ``multiplier`` x the pool's quota; in bursts of ``burst_multiplier``
    for ``burst_for_s`` out of every ``burst_every_s`` when those are set. Poisson arrivals by
    default, else evenly spaced."""

    multiplier: float = 1.5
    burst_multiplier: float = 0.0
    burst_every_s: float = 0.0
    burst_for_s: float = 0.0
    poisson: bool = True

    def rate_at(self, quota_per_s: float, t: float) -> float:
        bursting = self.burst_every_s > 0 and t % self.burst_every_s < self.burst_for_s
        return quota_per_s * (self.burst_multiplier if bursting else self.multiplier)

    def mean_multiplier(self) -> float:
        if self.burst_every_s <= 0:
            return self.multiplier
        share = self.burst_for_s / self.burst_every_s
        return share * self.burst_multiplier + (1 - share) * self.multiplier

    def arrivals(self, quota_per_s: float, duration_s: float, seed: int) -> list[float]:
        """Arrival times in [0, duration_s): Poisson by thinning, or evenly spaced by rate."""
        rng = random.Random(seed)
        peak = quota_per_s * max(self.multiplier, self.burst_multiplier)
        times: list[float] = []
        t = 0.0
        if not self.poisson:
            while t < duration_s:
                times.append(t)
                t += 1.0 / self.rate_at(quota_per_s, t)
            return times
        while True:
            t += rng.expovariate(peak)
            if t >= duration_s:
                return times
            if rng.random() * peak < self.rate_at(quota_per_s, t):
                times.append(t)


#: Which bar of issue 13 a learning scenario is judged by (``bench.figures.learning_bars``).
Bar = Literal["headerless", "headers", "known", "follow", "flaky", "queue"]


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    summary: str
    sessions: tuple[SessionSpec, ...]
    #: The proxies are told each session's rpm and burst (the broker enforces them at acquire).
    rpm_known: bool = True
    #: The upstream sends x-ratelimit-remaining/reset-requests with its answers.
    ratelimit_headers: bool = False
    #: The upstream's 429s carry the precise retry-after-ms beside Retry-After's whole seconds.
    retry_after_ms: bool = False
    #: The upstream's 429s carry no header at all: no Retry-After, no rate-limit header.
    headerless_429: bool = False
    load: Load = field(default_factory=Load)
    #: Kill (SIGKILL) replica 0 at this fraction of the run.
    kill_replica_at: float | None = None
    latency: Latency = DEFAULT_LATENCY
    #: Seconds of load and replicas per mode, when the scenario fixes them (else the command's).
    duration_s: float | None = None
    replicas: int | None = None
    #: Settings for this project's replicas in this scenario (over the command's --shared-env).
    shared_env: Mapping[str, str] = field(default_factory=dict)
    #: Run only this project's modes (the scenario varies one of its settings).
    shared_only: bool = False
    #: The bar of issue 13 it is judged by, and the early window that bar looks at (s).
    bar: Bar | None = None
    first_window_s: float | None = None
    #: The scenario a "queue" bar compares with: the same load without the setting.
    twin: str | None = None

    @property
    def quota_per_s(self) -> float:
        return sum(s.per_s for s in self.sessions)

    def capacity(self, duration_s: float) -> float:
        """The most successes the upstream allows in ``duration_s``: the rate (as scheduled),
        plus each bucket starting full; for a fixed window, the count of each window begun."""
        return self.allowed(0.0, duration_s)

    def allowed(self, start_s: float, end_s: float) -> float:
        """The most successes the upstream allows in [start_s, end_s), every session together."""
        return sum(s.allowed(start_s, end_s) for s in self.sessions)

    def changes(self) -> tuple[float, ...]:
        """When the upstream's limits change during the run (s)."""
        return tuple(sorted({at for s in self.sessions for at, _ in s.schedule}))

    def serving(self) -> tuple[SessionSpec, ...]:
        """Sessions that can answer at all (not revoked): the fairness index is over these."""
        return tuple(s for s in self.sessions if not s.faults.revoked)

    def upstream_config(self, seed: int) -> UpstreamConfig:
        return UpstreamConfig(
            credentials={
                s.secret: CredentialConfig(
                    rpm=s.rpm,
                    burst=s.burst,
                    shape=s.shape,
                    window_s=s.window_s,
                    schedule=s.schedule,
                    faults=s.faults,
                )
                for s in self.sessions
            },
            latency=self.latency,
            ratelimit_headers=self.ratelimit_headers,
            retry_after_ms=self.retry_after_ms,
            headerless_429=self.headerless_429,
            seed=seed,
        )

    def sessions_file(self) -> dict[str, object]:
        """The proxies' sessions file: ids and secrets, with rpm and burst when known."""
        entries: list[dict[str, object]] = []
        for s in self.sessions:
            entry: dict[str, object] = {"id": s.id, "secret": s.secret}
            if self.rpm_known:
                entry |= {"rpm": s.rpm, "burst": s.burst}
            entries.append(entry)
        return {"sessions": entries}


def pool(count: int, rpm: float, burst: int = 2) -> tuple[SessionSpec, ...]:
    return tuple(SessionSpec(f"s{index + 1}", rpm, burst) for index in range(count))


def _with_faults(sessions: tuple[SessionSpec, ...], faults: Faults) -> tuple[SessionSpec, ...]:
    """The pool with its first session given ``faults``."""
    return (replace(sessions[0], faults=faults), *sessions[1:])


def scenarios(sessions: int = 6, rpm: float = 240.0, multiplier: float = 1.5) -> list[Scenario]:
    """Every scenario, for a pool of ``sessions`` at ``rpm`` each (burst 2: the upstream allows
    two at once), offered ``multiplier`` x the quota."""
    base = pool(sessions, rpm)
    load = Load(multiplier=multiplier)
    flaky = Faults(burst_every_s=6.0, burst_for_s=2.0, burst_offset_s=1.0, reset_rate=0.05)
    unequal_rpms = [rpm * f for f in (0.25, 0.5, 1.0, 1.0, 1.5, 1.75)][:sessions]
    unequal = tuple(
        SessionSpec(f"s{i + 1}", r, 2) for i, r in enumerate(unequal_rpms + [rpm] * sessions)
    )[:sessions]
    peak = max(3.0, multiplier * 2)
    return [
        Scenario("known", f"{multiplier:g}x quota, rpm known to the proxies", base, load=load),
        Scenario(
            "unknown",
            f"{multiplier:g}x quota, limits unknown; upstream sends x-ratelimit-* headers",
            base,
            rpm_known=False,
            ratelimit_headers=True,
            load=load,
        ),
        Scenario(
            "unknown-ms",
            f"{multiplier:g}x quota, limits unknown; x-ratelimit-* headers and retry-after-ms",
            base,
            rpm_known=False,
            ratelimit_headers=True,
            retry_after_ms=True,
            load=load,
        ),
        Scenario(
            "unknown-429",
            f"{multiplier:g}x quota, limits unknown, no headers: 429 + Retry-After only",
            base,
            rpm_known=False,
            load=load,
        ),
        Scenario(
            "bursts",
            f"0.5x quota with bursts of {peak:g}x for 1.5 s every 5 s, rpm known",
            base,
            load=Load(multiplier=0.5, burst_multiplier=peak, burst_every_s=5.0, burst_for_s=1.5),
        ),
        Scenario(
            "flaky",
            f"{multiplier:g}x, s1 answers 503 for 2 s of every 6 s and resets 5% of connections",
            _with_faults(base, flaky),
            load=load,
        ),
        Scenario(
            "revoked",
            f"{multiplier:g}x quota, s1 revoked (401 to everything), rpm known",
            _with_faults(base, Faults(revoked=True)),
            load=load,
        ),
        Scenario(
            "slow",
            f"{multiplier:g}x quota, s1 takes 2.5 s longer per answer, rpm known",
            _with_faults(base, Faults(extra_latency_s=2.5)),
            load=load,
        ),
        Scenario(
            "unequal",
            f"{multiplier:g}x quota, rpm " + "/".join(f"{s.rpm:g}" for s in unequal) + ", known",
            unequal,
            load=load,
        ),
        Scenario(
            "kill",
            f"{multiplier:g}x quota, rpm known, replica 1 SIGKILLed at half time",
            base,
            load=load,
            kill_replica_at=0.5,
        ),
    ]


#: Issue 13's parameters: 3 sessions at 120 rpm each, 2 replicas, offered twice the quota.
LEARNING_SESSIONS, LEARNING_RPM, LEARNING_REPLICAS, LEARNING_MULTIPLIER = 3, 120.0, 2, 2.0
#: The issue's run lengths (s): the long runs, the short ones, and when the limit halves and
#: comes back in the "follow" run; the early window of the headerless bar.
LEARNING_LONG_S, LEARNING_SHORT_S = 180.0, 60.0
HALVE_AT_S, RESTORE_AT_S, FIRST_WINDOW_S = 60.0, 120.0, 60.0
#: A flaky session: 503 for 2 s of every 6 s (and 5% of its connections reset, as in "flaky").
FLAKY = Faults(burst_every_s=6.0, burst_for_s=2.0, burst_offset_s=1.0, reset_rate=0.05)


def learning_scenarios(scale: float = 1.0) -> list[Scenario]:
    """The bars of issue 13, at its parameters, every run length (and the times in it) scaled by
    ``scale`` (``--quick``: a short version with the same shape; its numbers only show that the
    machinery works). Limits unknown unless said; header-less means a 429 with no header at all.
    """
    long_s, short_s = LEARNING_LONG_S * scale, LEARNING_SHORT_S * scale
    first_s = FIRST_WINDOW_S * scale
    load = Load(multiplier=LEARNING_MULTIPLIER)
    base = pool(LEARNING_SESSIONS, LEARNING_RPM)
    # A fixed window of a minute, as counters keyed by the calendar minute keep it.
    window = tuple(replace(s, shape="window", window_s=60.0 * scale) for s in base)
    halving = tuple(
        replace(s, schedule=((HALVE_AT_S * scale, 0.5), (RESTORE_AT_S * scale, 1.0))) for s in base
    )
    known = Scenario("", "", base, load=load, replicas=LEARNING_REPLICAS)
    bare = replace(known, rpm_known=False, headerless_429=True)
    x = f"{LEARNING_MULTIPLIER:g}x"
    return [
        replace(
            bare,
            name="learn-bare-bucket",
            summary=f"{x} quota, limits unknown, header-less 429s, token bucket (burst 2)",
            duration_s=long_s,
            bar="headerless",
            first_window_s=first_s,
        ),
        replace(
            bare,
            name="learn-bare-window",
            summary=f"{x} quota, limits unknown, header-less 429s, fixed window of "
            f"{60 * scale:g} s",
            sessions=window,
            duration_s=long_s,
            bar="headerless",
            first_window_s=first_s,
        ),
        replace(
            known,
            name="learn-headers",
            summary=f"{x} quota, limits unknown; x-ratelimit-* headers (limit, remaining, reset)",
            rpm_known=False,
            ratelimit_headers=True,
            duration_s=short_s,
            bar="headers",
        ),
        replace(
            known,
            name="learn-known",
            summary=f"{x} quota, rpm and burst known to the proxies",
            duration_s=short_s,
            bar="known",
        ),
        replace(
            bare,
            name="learn-halving",
            summary=f"{x} quota, limits unknown, header-less 429s; the limit halves at "
            f"{HALVE_AT_S * scale:g} s and is restored at {RESTORE_AT_S * scale:g} s",
            sessions=halving,
            duration_s=long_s,
            bar="follow",
        ),
        replace(
            known,
            name="learn-flaky",
            summary=f"{x} quota, rpm known; s1 answers 503 for 2 s of every 6 s and resets 5% "
            "of its connections",
            sessions=_with_faults(base, FLAKY),
            duration_s=short_s,
            bar="flaky",
        ),
        replace(
            bare,
            name="learn-bare-queue",
            summary=f"learn-bare-bucket's first {first_s:g} s, with QUEUE_TIMEOUT=5",
            duration_s=first_s,
            shared_env={"QUEUE_TIMEOUT": "5"},
            shared_only=True,
            bar="queue",
            first_window_s=first_s,
            twin="learn-bare-bucket",
        ),
    ]


#: Run by default: the bars' two scenarios and one of each kind of trouble.
DEFAULT_SCENARIOS = ("known", "unknown", "bursts", "flaky", "revoked", "unequal", "kill")


def by_name(names: list[str], all_scenarios: list[Scenario]) -> list[Scenario]:
    known = {s.name: s for s in all_scenarios}
    missing = [n for n in names if n not in known]
    if missing:
        raise ValueError(f"unknown scenario(s) {', '.join(missing)}; known: {', '.join(known)}")
    return [known[n] for n in names]
