"""Prometheus metrics of one replica, served at /metrics on ADMIN_LISTEN (ENABLE_METRICS).

Each replica has its own ``CollectorRegistry`` (several replicas may share a process, in tests).
Two kinds of series:

* this replica's own: upstream attempts per pool and outcome, rate-limit events, cooldowns and
  breaker transitions it caused, attempts per client request, upstream latency, proxy overhead,
  leases in flight, the wait queue, alerts sent. Summed over replicas (``sum()`` in PromQL) they
  describe the fleet: each transition is counted by exactly one replica.
* the pools', read from Redis (``*_pool_*``), labelled by ``pool``: the same on every replica.
  One collector serves every pool the replica works for. Their cost is bounded: at most one read
  per pool per ``CLUSTER_MAX_AGE_S`` per replica, however often it is scraped: a housekeeping
  pass (so a quiet pool shows no cooldown that has run out; at most 256 due entries per set,
  like any script's), then two round trips: a fixed number of O(1) commands (ZCARD/SCARD), one
  per priority tier, plus at most ``OPS_SET_LIMIT`` session ids per breaker state and at most
  ``OPS_SET_LIMIT`` sessions' priority and unit budget (see ``PoolAdmin.census``).

The number of series grows with the pools, not with their sessions: per-session figures live in
Redis, the admin API and ``status``. With METRICS_PER_SESSION the counters and the breaker and
unit-budget gauges are labelled by ``session`` too (a series per session and outcome on every
replica: for small pools). No ``_created`` series, and no label value that is the sum of the
others (a pool's size is ``*_pool_size``, not a ``state``), so ``sum by`` over any label is
right. The text is rendered in a worker thread, so a scrape does not run on the event loop that
proxies, and at most once per RENDER_MAX_AGE_S, shared by the scrapes in between, so its CPU (the
thread still competes with the event loop for the interpreter) is bounded whatever the scrape
rate.

Sessions are labelled by id, never by secret.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping

import structlog
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from broker import BrokerError, Outcome
from broker.admin import Census
from broker.events import Transition
from broker.states import SessionState

__all__ = [
    "CLUSTER_MAX_AGE_S",
    "ERROR_OUTCOMES",
    "RENDER_MAX_AGE_S",
    "CensusRead",
    "ClusterCollector",
    "Metrics",
]

log = structlog.get_logger(__name__)

#: How long one read of the pool's state serves scrapes: bounds the Redis cost of /metrics per
#: replica to one small read per this many seconds, whatever the scrape interval.
CLUSTER_MAX_AGE_S = 5.0
#: How long one rendering of the text serves scrapes (see ``Metrics.exposition``).
RENDER_MAX_AGE_S = 1.0
#: Outcomes that count as errors for the fleet's error rate (429s have their own alert).
ERROR_OUTCOMES = frozenset(
    {Outcome.AUTH, Outcome.SERVER, Outcome.NETWORK, Outcome.TIMEOUT, Outcome.OTHER}
)
#: Attempts per client request: 1 is the goal; the tail shows retries burnt.
ATTEMPT_BUCKETS = (1, 2, 3, 4, 5, 6, 8, 10, 20, 50, 100)
#: Proxy overhead is sub-millisecond when healthy; buckets resolve that and the slow tail.
OVERHEAD_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
QUEUE_BUCKETS = (0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)

#: Reads one pool's census from the store (``PoolAdmin.census``).
CensusRead = Callable[[], Awaitable[Census]]


class ClusterCollector(Collector):
    """The pools' state as gauges labelled by ``pool``, from a cached census of each.

    ``reads`` maps a pool's name to the read of its census; a replica passes the pools it works
    for. A pool whose read fails is left out of that scrape (and logged); the others still show.
    ``per_session``: the breakers and unit budgets of each session too (else the pool's sums).
    """

    def __init__(
        self, prefix: str, reads: Mapping[str, CensusRead], *, per_session: bool = False
    ) -> None:
        self.prefix = prefix
        self.reads = dict(reads)
        self.per_session = per_session
        self.censuses: dict[str, Census] = {}
        self.read_at: float | None = None
        self._lock = asyncio.Lock()

    async def refresh(self) -> None:
        """Read each pool's state unless the last reads are younger than CLUSTER_MAX_AGE_S."""
        if not self.reads:
            return
        async with self._lock:  # concurrent scrapes share one read
            if self.read_at is not None and time.monotonic() - self.read_at < CLUSTER_MAX_AGE_S:
                return
            censuses = {}
            for pool, read in self.reads.items():
                try:
                    censuses[pool] = await read()
                except BrokerError as exc:
                    log.warning("pool state unreadable for metrics", pool=pool, error=str(exc))
            self.censuses = censuses
            self.read_at = time.monotonic()

    def _families(self) -> list[GaugeMetricFamily]:
        p = self.prefix
        families = [
            GaugeMetricFamily(
                f"{p}_pool_sessions",
                "Sessions of the pool by state, fleet-wide (read from Redis)",
                labels=["pool", "state"],
            ),
            GaugeMetricFamily(
                f"{p}_pool_size", "Sessions of the pool, fleet-wide", labels=["pool"]
            ),
            GaugeMetricFamily(
                f"{p}_pool_leases", "Live leases of the pool, fleet-wide", labels=["pool"]
            ),
            GaugeMetricFamily(
                f"{p}_pool_tier_available",
                "Sessions of each priority tier eligible now",
                labels=["pool", "tier"],
            ),
            GaugeMetricFamily(
                f"{p}_pool_tier_size",
                "Sessions of each priority tier (only while the pool has at most OPS_SET_LIMIT "
                "sessions)",
                labels=["pool", "tier"],
            ),
            GaugeMetricFamily(
                f"{p}_pool_rate_sessions",
                "Sessions of the pool by the source of the rate they are paced at: configured, "
                "header, learned (none: unpaced; only while the pool has at most OPS_SET_LIMIT "
                "sessions)",
                labels=["pool", "source"],
            ),
        ]
        if self.per_session:
            return [*families, *self._session_families()]
        return [
            *families,
            GaugeMetricFamily(
                f"{p}_pool_tpm",
                "Unit budgets of the pool's sessions added up, in units per minute (of the "
                "first OPS_SET_LIMIT sessions)",
                labels=["pool"],
            ),
            GaugeMetricFamily(
                f"{p}_pool_units_available",
                "Units the pool's budgets have left now, added up (of the first OPS_SET_LIMIT "
                "sessions)",
                labels=["pool"],
            ),
        ]

    def _session_families(self) -> list[GaugeMetricFamily]:
        p = self.prefix
        return [
            GaugeMetricFamily(
                f"{p}_session_breaker",
                "1 for each session whose circuit breaker is not closed, by its state "
                "(open, half_open); sessions not listed are closed",
                labels=["pool", "session", "state"],
            ),
            GaugeMetricFamily(
                f"{p}_session_tpm",
                "Unit budget of each session that has one, in units per minute",
                labels=["pool", "session"],
            ),
            GaugeMetricFamily(
                f"{p}_session_units_available",
                "Units each session's budget has left now (0 while overdrawn)",
                labels=["pool", "session"],
            ),
        ]

    def describe(self) -> Iterable[Metric]:
        return self._families()

    def collect(self) -> Iterator[Metric]:
        if not self.censuses:
            return
        families = self._families()
        sessions, size, leases, tier_available, tier_size, rates, *budgets = families
        for pool, census in sorted(self.censuses.items()):
            for state, count in census.sessions.items():
                if state == "total":
                    size.add_metric([pool], count)
                else:
                    sessions.add_metric([pool, state], count)
            leases.add_metric([pool], census.leases)
            for tier in census.tiers:
                tier_available.add_metric([pool, str(tier.priority)], tier.available)
                if tier.sessions is not None:
                    tier_size.add_metric([pool, str(tier.priority)], tier.sessions)
            if self.per_session:
                breakers, tpm, units = budgets
                for session_id, state in sorted(census.breakers.items()):
                    breakers.add_metric([pool, session_id, state], 1)
                for session_id, budget in census.units.items():
                    tpm.add_metric([pool, session_id], budget.tpm)
                    units.add_metric([pool, session_id], budget.available)
            elif census.units:
                tpm, units = budgets
                tpm.add_metric([pool], sum(b.tpm for b in census.units.values()))
                units.add_metric([pool], sum(b.available for b in census.units.values()))
            for source, count in census.rate_sources.items():
                rates.add_metric([pool, source], count)
        yield from families


class Metrics:
    """The metric objects of one replica, and the calls the request path makes on them."""

    def __init__(
        self,
        prefix: str,
        *,
        per_session: bool = False,
        pools: Mapping[str, CensusRead] | None = None,
        replica_id: str | None = None,
    ) -> None:
        """``per_session``: label by session too (METRICS_PER_SESSION); ``pools``: the census
        read of each pool this replica works for, by pool name; ``replica_id``: the replica's
        id, shown by ``*_replica_info``."""
        # Each counter's ``_created`` twin doubles the series and says nothing a dashboard uses.
        disable_created_metrics()  # type: ignore[no-untyped-call]  # unannotated upstream
        self.registry = CollectorRegistry()
        r, p = self.registry, prefix
        self.per_session = per_session
        #: The labels that say whose a per-session figure is: the pool, and the session if asked.
        by = ["pool", "session"] if per_session else ["pool"]
        self.session_requests = Counter(
            f"{p}_session_requests",
            "Upstream attempts by pool (and session, with METRICS_PER_SESSION) and outcome",
            [*by, "outcome"],
            registry=r,
        )
        self.client_responses = Counter(
            f"{p}_client_responses", "Answers to clients by HTTP status code", ["code"], registry=r
        )
        self.rate_limit_events = Counter(
            f"{p}_rate_limit_events",
            "Rate limits met, by pool (and session) and source: 429 answers, or headers saying "
            "none is left",
            [*by, "source"],
            registry=r,
        )
        self.cooldowns_started = Counter(
            f"{p}_cooldowns_started",
            "Cooldowns this replica's calls started, by pool (and session)",
            by,
            registry=r,
        )
        self.breaker_transitions = Counter(
            f"{p}_breaker_transitions",
            "Circuit breaker transitions this replica's calls made, by pool (and session) and "
            "new state",
            [*by, "state"],
            registry=r,
        )
        self.attempts = Histogram(
            f"{p}_attempts_per_request",
            "Upstream attempts per client request (above 1: retries)",
            buckets=ATTEMPT_BUCKETS,
            registry=r,
        )
        self.upstream_latency = Histogram(
            f"{p}_upstream_latency_seconds",
            "Time from sending an attempt to the upstream's response headers",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.overhead = Histogram(
            f"{p}_proxy_overhead_seconds",
            "Time a request spent in the proxy itself before its answer's headers went out: "
            "total minus upstream waits, backoff and queueing",
            buckets=OVERHEAD_BUCKETS,
            registry=r,
        )
        self.leases_in_flight = Gauge(
            f"{p}_leases_in_flight", "Leases this replica holds right now", registry=r
        )
        self.queue_depth = Gauge(
            f"{p}_queue_depth", "Requests waiting for a session on this replica", registry=r
        )
        self.queue_wait = Histogram(
            f"{p}_queue_wait_seconds",
            "Time requests waited for a session",
            buckets=QUEUE_BUCKETS,
            registry=r,
        )
        self.queue_exits = Counter(
            f"{p}_queue_exits",
            "Requests that left the wait queue, by result (served, timeout, refused, cancelled)",
            ["result"],
            registry=r,
        )
        self.alerts_sent = Counter(
            f"{p}_alerts_sent",
            "Alert notices this replica delivered, by alert kind and status",
            ["alert", "status"],
            registry=r,
        )
        self.webhook_failures = Counter(
            f"{p}_webhook_failures",
            "Failed webhook deliveries (each retry counts)",
            registry=r,
        )
        self.fallback_leases = Counter(
            f"{p}_fallback_leases",
            "Leases a request routed to a pool took from a pool of its fallback chain",
            ["pool", "fallback"],
            registry=r,
        )
        self.pool_info = Gauge(
            f"{p}_pool_info",
            "1 for each pool this replica serves, with its fallback (empty: none) and whether "
            "it is the default pool",
            ["pool", "fallback", "default"],
            registry=r,
        )
        if replica_id is not None:
            # One series per replica (the fleet, not the pool): its id as in its store claims,
            # its log lines and the admin API.
            Gauge(
                f"{p}_replica_info",
                "1, labelled with this replica's id (as in its claims, logs and admin API)",
                ["replica"],
                registry=r,
            ).labels(replica_id).set(1)
        self.cluster = ClusterCollector(p, pools or {}, per_session=per_session)
        r.register(self.cluster)
        ProcessCollector(registry=r)
        #: This replica's attempts and errors so far, for the fleet's error-rate alert.
        self.attempts_total = 0
        self.errors_total = 0
        #: Client requests this replica answered, for the health summary's request trigger.
        self.requests_total = 0
        # The labelled series the request path updates, kept rather than looked up per request
        # (``labels()`` validates and locks on every call).
        self._session_requests: dict[tuple[str, str, Outcome], Counter] = {}
        self._client_responses: dict[int, Counter] = {}
        #: The last rendering (or the one under way), which scrapes share while it is fresh.
        self._rendering: asyncio.Future[bytes] | None = None
        self._rendered_at = 0.0
        #: Seconds a rendering serves later scrapes: the CPU /metrics costs is bounded whatever
        #: the scrape rate (a scrape interval is 15 s or more; rendering takes milliseconds).
        self.render_max_age_s = RENDER_MAX_AGE_S

    def _whose(self, pool: str, session_id: str) -> tuple[str, ...]:
        """The label values of a per-session figure (see ``per_session``)."""
        return (pool, session_id) if self.per_session else (pool,)

    # The request path.

    def lease_taken(self) -> None:
        self.leases_in_flight.inc()

    def lease_released(
        self, pool: str, session_id: str, outcome: Outcome, *, exhausted: bool
    ) -> None:
        """A lease ended with ``outcome``; ``exhausted``: headers said nothing is left."""
        self.leases_in_flight.dec()
        key = (pool, session_id if self.per_session else "", outcome)
        series = self._session_requests.get(key)
        if series is None:
            series = self.session_requests.labels(*self._whose(pool, session_id), outcome.value)
            self._session_requests[key] = series
        series.inc()
        if outcome is Outcome.UNUSED:
            return
        self.attempts_total += 1
        if outcome in ERROR_OUTCOMES:
            self.errors_total += 1
        if outcome is Outcome.RATE_LIMITED:
            self.rate_limit_events.labels(*self._whose(pool, session_id), "429").inc()
        elif exhausted:
            self.rate_limit_events.labels(*self._whose(pool, session_id), "headers").inc()

    def fallback_taken(self, pool: str, fallback: str) -> None:
        self.fallback_leases.labels(pool, fallback).inc()

    def pools_served(self, pools: Iterable[tuple[str, str | None, bool]]) -> None:
        """The pools this replica serves now: (name, fallback, is the default)."""
        self.pool_info.clear()
        for name, fallback, default in pools:
            self.pool_info.labels(name, fallback or "", str(default).lower()).set(1)

    def upstream_answered(self, seconds: float) -> None:
        self.upstream_latency.observe(seconds)

    def request_done(self, status: int, attempts: int, overhead_s: float | None) -> None:
        self.requests_total += 1
        series = self._client_responses.get(status)
        if series is None:
            series = self._client_responses[status] = self.client_responses.labels(str(status))
        series.inc()
        if attempts:
            self.attempts.observe(attempts)
        if overhead_s is not None:
            self.overhead.observe(max(0.0, overhead_s))

    # The wait queue (proxy/request/forward.py's, when a request waits for a session).

    def queue_entered(self) -> None:
        self.queue_depth.inc()

    def queue_left(self, waited_s: float, result: str) -> None:
        """``result``: served, timeout, refused or cancelled."""
        self.queue_depth.dec()
        self.queue_wait.observe(waited_s)
        self.queue_exits.labels(result).inc()

    # The broker's transitions and the alerts.

    def transitions(self, transitions: Iterable[Transition]) -> None:
        for t in transitions:
            if t.kind == "breaker":
                self.breaker_transitions.labels(*self._whose(t.pool, t.session_id), t.new).inc()
            elif t.new == SessionState.COOLING:
                self.cooldowns_started.labels(*self._whose(t.pool, t.session_id)).inc()

    def alert_sent(self, kind: str, status: str) -> None:
        self.alerts_sent.labels(kind, status).inc()

    async def exposition(self) -> bytes:
        """The text format, with the pool's gauges no older than CLUSTER_MAX_AGE_S, rendered in
        a worker thread (the request path's updates take the metrics' own locks meanwhile) at
        most once per ``render_max_age_s``: scrapes in between get the last rendering."""
        await self.cluster.refresh()
        rendering = self._rendering
        if rendering is None or (rendering.done() and not self._fresh(rendering)):
            rendering = asyncio.ensure_future(asyncio.to_thread(generate_latest, self.registry))
            rendering.add_done_callback(self._rendered)
            self._rendering = rendering
        # A scrape that goes away leaves the rendering to the others.
        return await asyncio.shield(rendering)

    def _fresh(self, rendering: asyncio.Future[bytes]) -> bool:
        """Whether ``rendering`` (done) may serve this scrape: it did not fail, is young
        enough, and no newer read of the pools' state came since."""
        if rendering.cancelled() or rendering.exception() is not None:
            return False
        if (self.cluster.read_at or 0.0) > self._rendered_at:
            return False
        return time.monotonic() - self._rendered_at < self.render_max_age_s

    def _rendered(self, rendering: asyncio.Future[bytes]) -> None:
        self._rendered_at = time.monotonic()
        if not rendering.cancelled():
            rendering.exception()  # seen, even when every scrape waiting for it went away
