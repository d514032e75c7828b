"""The figures of one fleet run, computed from the client's records and the upstream's counts:
goodput against the quota and against what was attainable, waste, latency quantiles, fairness,
and how fast the fleet followed a limit that changed."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from bench.load import Record
from bench.scenarios import Scenario

__all__ = [
    "FOLLOW_429",
    "FOLLOW_GOODPUT",
    "FOLLOW_WINDOW_S",
    "RunFigures",
    "compute",
    "follow_times",
    "jain",
    "percentile",
]

#: The fleet "follows" a limit from the first second that starts FOLLOW_WINDOW_S seconds in which
#: the upstream answered at least FOLLOW_GOODPUT of the new limit with success, and 429s were at
#: most FOLLOW_429 of the attempts: below the limit (no overshoot) and near it (no undershoot).
FOLLOW_WINDOW_S = 5
FOLLOW_GOODPUT = 0.85
FOLLOW_429 = 0.10


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
    #: The upstream's answers per second of the run, every session together (status -> count).
    upstream_timeline: list[dict[str, int]] = field(default_factory=list)
    #: Successes answered by the end of the scenario's first window, over what the upstream
    #: allows in it (NaN when the scenario has no first window).
    first_window_s: float = math.nan
    served_first_window: float = math.nan
    #: Per change of the upstream's limit ("down@60s", "up@120s"): seconds until the fleet
    #: followed it (NaN: not within the run). See FOLLOW_WINDOW_S.
    follow_s: dict[str, float] = field(default_factory=dict)


def compute(
    scenario: Scenario,
    mode: str,
    *,
    replicas: int,
    duration_s: float,
    records: Sequence[Record],
    upstream: Mapping[str, Mapping[str, object]],
    proxy_cpu_s: float,
    upstream_timeline: Sequence[Mapping[str, int]] = (),
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
    attainable = min(float(len(records)), _attainable(scenario, offered))
    timeline_up = [dict(second) for second in upstream_timeline]
    first_s = scenario.first_window_s
    served_first = math.nan
    if first_s:
        # Served by the end of the window: answered then, wherever the request waited.
        served = sum(1 for r in records if r.status == 200 and r.due_s + r.latency_s <= first_s)
        served_first = served / scenario.allowed(0.0, first_s)
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
        upstream_timeline=timeline_up,
        first_window_s=first_s if first_s else math.nan,
        served_first_window=served_first,
        follow_s=follow_times(scenario, timeline_up, duration_s),
    )


def _attainable(scenario: Scenario, offered: Sequence[int]) -> float:
    """What any proxy without a queue could get: a period's quota cannot serve another period's
    arrivals. A bucket's period is a second (plus the full buckets at the start), a fixed
    window's is the window; only the sessions that can answer at all count."""
    serving = scenario.serving()
    if serving and serving[0].shape == "window":
        period = serving[0].window_s
        periods: dict[int, int] = {}
        for second, n in enumerate(offered):
            periods[int(second // period)] = periods.get(int(second // period), 0) + n
        return sum(
            min(n, sum(s.allowed(i * period, (i + 1) * period) for s in serving))
            for i, n in periods.items()
        )
    total = float(sum(s.burst for s in serving))
    for second, n in enumerate(offered):
        total += min(n, sum((s.limits.rpm_at(second) or 0.0) / 60.0 for s in serving))
    return total


def follow_times(
    scenario: Scenario, timeline: Sequence[Mapping[str, int]], duration_s: float
) -> dict[str, float]:
    """For each change of the upstream's limit: seconds from it until the fleet follows the new
    limit (the first second starting FOLLOW_WINDOW_S seconds of successes >= FOLLOW_GOODPUT of
    the limit and 429s <= FOLLOW_429 of the attempts, within the change's phase), NaN if never."""
    changes = scenario.changes()
    if not changes:
        return {}
    ends = [*changes[1:], duration_s]
    follows: dict[str, float] = {}
    for at_s, end_s in zip(changes, ends, strict=True):
        before = sum(s.limits.rpm_at(at_s - 1e-6) or 0.0 for s in scenario.sessions)
        after = sum(s.limits.rpm_at(at_s) or 0.0 for s in scenario.sessions)
        name = f"{'down' if after < before else 'up'}@{at_s:g}s"
        follows[name] = _follow(timeline, at_s, end_s, after / 60.0)
    return follows


def _follow(
    timeline: Sequence[Mapping[str, int]], at_s: float, end_s: float, quota_per_s: float
) -> float:
    first, last = math.ceil(at_s), math.floor(end_s) - FOLLOW_WINDOW_S
    for start in range(first, last + 1):
        seconds = timeline[start : start + FOLLOW_WINDOW_S]
        attempts = sum(sum(second.values()) for second in seconds)
        ok = sum(_successes(second) for second in seconds)
        refused = sum(second.get("429", 0) for second in seconds)
        if (
            ok >= FOLLOW_GOODPUT * quota_per_s * FOLLOW_WINDOW_S
            and refused <= FOLLOW_429 * attempts
        ):
            return start - at_s
    return math.nan


def _successes(statuses: Mapping[str, int]) -> int:
    return sum(count for status, count in statuses.items() if status.startswith("2"))


def _quantiles(values: Sequence[float]) -> dict[str, float]:
    return {f"p{q}": percentile(values, q) for q in (50, 95, 99)}
