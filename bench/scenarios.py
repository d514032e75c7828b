"""The fleet benchmark's scenarios: a pool of sessions with their upstream limits and faults, what
the proxies are told about those limits, and the shape of the offered load.

Every scenario offers load as a multiple of the pool's total quota (the sum of the sessions' rpm),
so a result reads as "goodput / quota" whatever the pool.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field, replace

from proxy.testing.upstream import (
    NO_FAULTS,
    CredentialConfig,
    Faults,
    Latency,
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

    @property
    def secret(self) -> str:
        return f"sk-sim-{self.id}"

    @property
    def per_s(self) -> float:
        return self.rpm / 60.0


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
    load: Load = field(default_factory=Load)
    #: Kill (SIGKILL) replica 0 at this fraction of the run.
    kill_replica_at: float | None = None
    latency: Latency = DEFAULT_LATENCY

    @property
    def quota_per_s(self) -> float:
        return sum(s.per_s for s in self.sessions)

    def capacity(self, duration_s: float) -> float:
        """The most successes the upstream allows in ``duration_s``: the rate, plus each bucket
        starting full."""
        return sum(s.per_s * duration_s + s.burst for s in self.sessions)

    def serving(self) -> tuple[SessionSpec, ...]:
        """Sessions that can answer at all (not revoked): the fairness index is over these."""
        return tuple(s for s in self.sessions if not s.faults.revoked)

    def upstream_config(self, seed: int) -> UpstreamConfig:
        return UpstreamConfig(
            credentials={
                s.secret: CredentialConfig(rpm=s.rpm, burst=s.burst, faults=s.faults)
                for s in self.sessions
            },
            latency=self.latency,
            ratelimit_headers=self.ratelimit_headers,
            retry_after_ms=self.retry_after_ms,
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


#: Run by default: the bars' two scenarios and one of each kind of trouble.
DEFAULT_SCENARIOS = ("known", "unknown", "bursts", "flaky", "revoked", "unequal", "kill")


def by_name(names: list[str], all_scenarios: list[Scenario]) -> list[Scenario]:
    known = {s.name: s for s in all_scenarios}
    missing = [n for n in names if n not in known]
    if missing:
        raise ValueError(f"unknown scenario(s) {', '.join(missing)}; known: {', '.join(known)}")
    return [known[n] for n in names]
