"""The figures of one fleet run, computed from the client's records and the upstream's counts,
and the bars of the issue checked against them."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from bench.load import Record
from bench.scenarios import Scenario

#: The issue's bars, at 1.5x quota with 3 replicas.
BAR_WASTE_VS_NAIVE = 0.30  # shared wastes at least 70% fewer attempts per success than naive
BAR_GOODPUT_KNOWN = 0.95
BAR_UPSTREAM_429_KNOWN = 0.01
BAR_GOODPUT_UNKNOWN = 0.90


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0-100); NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def jain(values: Sequence[float]) -> float:
    """Jain's fairness index: 1 when all equal, 1/n when one takes everything."""
    total = sum(values)
    squares = sum(v * v for v in values)
    return total * total / (len(values) * squares) if squares else math.nan


@dataclass
class RunFigures:
    scenario: str
    mode: str
    replicas: int
    duration_s: float
    offered_per_s: float
    quota_per_s: float
    capacity: float
    requests: int
    ok: int
    goodput_per_s: float
    goodput_vs_quota: float
    attainable: float
    goodput_vs_attainable: float
    client_statuses: dict[str, int]
    upstream_attempts: int
    upstream_ok: int
    upstream_429: int
    upstream_failed: int
    wasted_per_success: float
    upstream_429_share: float
    attempts_per_request: float
    latency_ok_s: dict[str, float]
    latency_all_s: dict[str, float]
    share: dict[str, float]
    quota_share: dict[str, float]
    jain: float
    upstream_by_session: dict[str, dict[str, int]]
    timeline_ok: list[int]
    timeline_offered: list[int]
    failovers: int
    proxy_cpu_s: float
    proxy_cpu_ms_per_request: float
    notes: list[str] = field(default_factory=list)
    #: shared modes: each session's hash at the end of the run (cooldowns, breaker, ...).
    broker_state: dict[str, dict[str, str]] = field(default_factory=dict)


def compute(
    scenario: Scenario,
    mode: str,
    *,
    replicas: int,
    duration_s: float,
    records: Sequence[Record],
    upstream: Mapping[str, Mapping[str, object]],
    proxy_cpu_s: float,
) -> RunFigures:
    statuses: Counter[str] = Counter(str(r.status) for r in records)
    ok = statuses.pop("200", 0)
    by_session: dict[str, dict[str, int]] = {}
    for s in scenario.sessions:
        counts = upstream.get(s.secret, {}).get("statuses", {})
        assert isinstance(counts, dict)
        by_session[s.id] = {str(k): int(v) for k, v in counts.items()}
    attempts = sum(sum(c.values()) for c in by_session.values())
    upstream_ok = sum(v for c in by_session.values() for k, v in c.items() if k.startswith("2"))
    upstream_429 = sum(c.get("429", 0) for c in by_session.values())
    failed = attempts - upstream_ok - upstream_429
    capacity = scenario.capacity(duration_s)
    serving = scenario.serving()
    ok_by = {s.id: _successes(by_session[s.id]) for s in serving}
    share = {k: v / upstream_ok if upstream_ok else 0.0 for k, v in ok_by.items()}
    serving_quota = sum(s.per_s for s in serving)
    quota_share = {s.id: s.per_s / serving_quota for s in serving}
    fairness = jain([ok_by[s.id] / (s.per_s * duration_s + s.burst) for s in serving])
    ok_latencies = [r.latency_s for r in records if r.status == 200]
    all_latencies = [r.latency_s for r in records if isinstance(r.status, int) and r.status > 0]
    timeline = [0] * max(1, math.ceil(duration_s))
    offered = [0] * len(timeline)
    for r in records:
        offered[min(len(timeline) - 1, int(r.due_s))] += 1
        if r.status == 200:
            timeline[min(len(timeline) - 1, int(r.due_s))] += 1
    # Without a queue a second's quota cannot serve another second's arrivals: the most that can
    # succeed is each second's arrivals up to the quota of the sessions that can answer at all,
    # plus their full buckets at the start.
    serving_per_s = sum(s.per_s for s in serving)
    attainable = min(
        len(records),
        sum(min(n, serving_per_s) for n in offered) + sum(s.burst for s in serving),
    )
    return RunFigures(
        scenario=scenario.name,
        mode=mode,
        replicas=replicas,
        duration_s=duration_s,
        offered_per_s=len(records) / duration_s,
        quota_per_s=scenario.quota_per_s,
        capacity=capacity,
        requests=len(records),
        ok=ok,
        goodput_per_s=ok / duration_s,
        goodput_vs_quota=ok / capacity,
        attainable=attainable,
        goodput_vs_attainable=ok / attainable if attainable else math.nan,
        client_statuses=dict(sorted(statuses.items())),
        upstream_attempts=attempts,
        upstream_ok=upstream_ok,
        upstream_429=upstream_429,
        upstream_failed=failed,
        wasted_per_success=(attempts - upstream_ok) / upstream_ok if upstream_ok else math.inf,
        upstream_429_share=upstream_429 / attempts if attempts else 0.0,
        attempts_per_request=attempts / len(records) if records else 0.0,
        latency_ok_s=_quantiles(ok_latencies),
        latency_all_s=_quantiles(all_latencies),
        share=share,
        quota_share=quota_share,
        jain=fairness,
        upstream_by_session=by_session,
        timeline_ok=timeline,
        timeline_offered=offered,
        failovers=sum(r.failovers for r in records),
        proxy_cpu_s=proxy_cpu_s,
        proxy_cpu_ms_per_request=1000 * proxy_cpu_s / len(records) if records else 0.0,
    )


def _successes(statuses: Mapping[str, int]) -> int:
    return sum(count for status, count in statuses.items() if status.startswith("2"))


def _quantiles(values: Sequence[float]) -> dict[str, float]:
    return {f"p{q}": percentile(values, q) for q in (50, 95, 99)}


def _ms(seconds: float) -> str:
    return "-" if math.isnan(seconds) else f"{seconds * 1000:.0f}"


def _errors(statuses: Mapping[str, int]) -> str:
    return " ".join(f"{k}:{v}" for k, v in statuses.items()) or "-"


HEADER = (
    "| scenario | mode | goodput/s | vs quota | vs attainable | wasted/success | upstream 429 "
    "| attempts/req | client errors | p50 ms | p95 ms | p99 ms | Jain | cpu ms/req |\n"
    "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: "
    "| ---: |"
)


def row(f: RunFigures) -> str:
    lat = f.latency_ok_s
    return (
        f"| {f.scenario} | {f.mode} | {f.goodput_per_s:.1f} | {f.goodput_vs_quota:.1%} "
        f"| {f.goodput_vs_attainable:.1%} "
        f"| {f.wasted_per_success:.3f} | {f.upstream_429_share:.1%} | {f.attempts_per_request:.2f} "
        f"| {_errors(f.client_statuses)} | {_ms(lat['p50'])} | {_ms(lat['p95'])} "
        f"| {_ms(lat['p99'])} | {f.jain:.3f} | {f.proxy_cpu_ms_per_request:.2f} |"
    )


def table(results: Sequence[RunFigures]) -> str:
    return "\n".join([HEADER, *(row(f) for f in results)])


@dataclass(frozen=True)
class Verdict:
    bar: str
    passed: bool
    detail: str

    def line(self) -> str:
        return f"{'PASS' if self.passed else 'FAIL'}  {self.bar}: {self.detail}"


def bars(results: Sequence[RunFigures]) -> list[Verdict]:
    """The issue's bars, for every shared mode, where the needed runs exist."""
    found = {(f.scenario, f.mode): f for f in results}
    shared = sorted({f.mode for f in results if f.mode.startswith("shared-")})
    verdicts: list[Verdict] = []
    for scenario in ("known", "unknown"):
        naive, local = found.get((scenario, "naive")), found.get((scenario, "local"))
        for mode in shared:
            ours = found.get((scenario, mode))
            if ours is None:
                continue
            if naive is not None and naive.wasted_per_success > 0:
                cut = 1 - ours.wasted_per_success / naive.wasted_per_success
                verdicts.append(
                    Verdict(
                        f"{scenario}: {mode} wastes >= 70% fewer attempts/success than naive",
                        ours.wasted_per_success <= BAR_WASTE_VS_NAIVE * naive.wasted_per_success,
                        f"{ours.wasted_per_success:.3f} vs {naive.wasted_per_success:.3f} "
                        f"({cut:.0%} fewer)",
                    )
                )
            if local is not None:
                verdicts.append(
                    Verdict(
                        f"{scenario}: {mode} wastes fewer attempts/success than local",
                        ours.wasted_per_success < local.wasted_per_success,
                        f"{ours.wasted_per_success:.3f} vs {local.wasted_per_success:.3f}",
                    )
                )
            if scenario == "known":
                verdicts.append(
                    Verdict(
                        f"known: {mode} goodput >= 95% of quota",
                        ours.goodput_vs_quota >= BAR_GOODPUT_KNOWN,
                        f"{ours.goodput_vs_quota:.1%}",
                    )
                )
                verdicts.append(
                    Verdict(
                        f"known: {mode} upstream 429s < 1% of attempts",
                        ours.upstream_429_share < BAR_UPSTREAM_429_KNOWN,
                        f"{ours.upstream_429_share:.2%} ({ours.upstream_429} of "
                        f"{ours.upstream_attempts})",
                    )
                )
            else:
                verdicts.append(
                    Verdict(
                        f"unknown: {mode} goodput >= 90% of quota",
                        ours.goodput_vs_quota >= BAR_GOODPUT_UNKNOWN,
                        f"{ours.goodput_vs_quota:.1%}",
                    )
                )
    return verdicts
