"""/metrics on ADMIN_LISTEN: this replica's counters after known traffic, and the pool's gauges,
the same on every replica; never a secret."""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import aiohttp
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from broker import Outcome, StoreError, Strategy
from broker.admin import Census, TierCount, UnitBudget
from broker.constants import OPS_SET_LIMIT
from broker.events import Transition
from proxy.telemetry.metrics import ClusterCollector, Metrics
from proxy.testing import SimulatedUpstream
from tests.proxy.conftest import SESSIONS, TIERED, store_now_ms

if TYPE_CHECKING:
    from proxy.serve import RunningReplica
    from tests.proxy.conftest import StartReplica

CHAT = "/v1/chat/completions"
BODY = {"model": "m", "messages": []}
DASHBOARD = Path(__file__).parents[2] / "deploy" / "grafana" / "session-broker.json"
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def scrape(http: aiohttp.ClientSession, replica: RunningReplica) -> str:
    async with http.get(f"{replica.ops_url}/metrics") as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        return await response.text()


def samples(text: str) -> Samples:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(found: Samples, name: str, **labels: str) -> float:
    return found.get((name, frozenset(labels.items())), 0.0)


async def settled(replica: RunningReplica, attempts: int) -> None:
    """Wait until the store has heard of ``attempts`` releases (they land in the background)."""
    for _ in range(200):
        views = await replica.replica.admin.sessions()
        if sum(sum(v.outcomes.values()) for v in views) >= attempts:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("releases did not land")


async def test_two_replicas_show_their_counters_and_the_same_pool_gauges(
    start_replica: StartReplica,
    shared_redis: str,
    sim: SimulatedUpstream,
    http: aiohttp.ClientSession,
) -> None:
    """6 requests through one replica and 4 through the other, session c answering 429: each
    shows its own counters (by pool, not by session), they add up to the traffic, and the pool
    gauges agree."""
    fields = {"redis_url": shared_redis, "session_selection_strategy": Strategy.ROUND_ROBIN}
    one, two = await start_replica(**fields), await start_replica(**fields)
    sim.force("secret-c", 429, {"Retry-After": "60"})
    for replica, count in ((one, 6), (two, 4)):
        for _ in range(count):
            async with http.post(replica.proxy_url + CHAT, json=BODY) as response:
                assert response.status == 200
    await settled(one, 11)
    found = [samples(await scrape(http, r)) for r in (one, two)]
    texts = [await scrape(http, r) for r in (one, two)]

    def total(name: str, **labels: str) -> float:
        return sum(value(f, name, **labels) for f in found)

    assert [value(f, "session_broker_client_responses_total", code="200") for f in found] == [6, 4]
    requests = "session_broker_session_requests_total"
    assert total(requests, pool="default", outcome="rate_limited") == 1
    assert total(requests, pool="default", outcome="success") == 10
    assert total("session_broker_rate_limit_events_total", pool="default", source="429") == 1
    assert total("session_broker_cooldowns_started_total", pool="default") == 1
    assert not [key for f in found for key in f if "session" in dict(key[1])]
    assert total("session_broker_attempts_per_request_count") == 10
    assert total("session_broker_attempts_per_request_sum") == 11
    assert total("session_broker_upstream_latency_seconds_count") == 11
    assert [value(f, "session_broker_proxy_overhead_seconds_count") for f in found] == [6, 4]
    assert [value(f, "session_broker_leases_in_flight") for f in found] == [0, 0]
    for f in found:
        assert value(f, "session_broker_pool_size", pool="default") == 3
        assert value(f, "session_broker_pool_sessions", pool="default", state="cooling") == 1
        assert value(f, "session_broker_pool_sessions", pool="default", state="available") == 2
        assert value(f, "session_broker_pool_leases", pool="default") == 0
    pool_lines = [
        sorted(line for line in text.splitlines() if re.match(r"session_broker_pool", line))
        for text in texts
    ]
    assert pool_lines[0] == pool_lines[1]
    assert pool_lines[0]
    for text in texts:
        for secret in (s.secret for s in SESSIONS):
            assert secret not in text


async def test_per_session_labels_are_opt_in(
    start_replica: StartReplica,
    shared_redis: str,
    sim: SimulatedUpstream,
    http: aiohttp.ClientSession,
) -> None:
    """With METRICS_PER_SESSION the counters carry the session's id as well."""
    replica = await start_replica(
        redis_url=shared_redis,
        session_selection_strategy=Strategy.ROUND_ROBIN,
        metrics_per_session=True,
    )
    sim.force("secret-c", 429, {"Retry-After": "60"})
    for _ in range(3):
        async with http.post(replica.proxy_url + CHAT, json=BODY) as response:
            assert response.status == 200
    await settled(replica, 4)
    found = samples(await scrape(http, replica))
    requests = "session_broker_session_requests_total"
    assert value(found, requests, pool="default", session="c", outcome="rate_limited") == 1
    successes = [value(found, requests, pool="default", session=s, outcome="success") for s in "ab"]
    assert sum(successes) == 3
    events = "session_broker_rate_limit_events_total"
    assert value(found, events, pool="default", session="c", source="429") == 1
    assert value(found, "session_broker_cooldowns_started_total", pool="default", session="c") == 1


@pytest.mark.parametrize("per_session", [False, True], ids=["by-pool", "by-session"])
async def test_breaker_state(
    per_session: bool,
    start_replica: StartReplica,
    sim: SimulatedUpstream,
    http: aiohttp.ClientSession,
) -> None:
    """A session whose breaker opened counts in the pool's open sessions; with
    METRICS_PER_SESSION it shows in session_breaker with its id and state too."""
    replica = await start_replica(
        session_selection_strategy=Strategy.ROUND_ROBIN,
        circuit_breaker_threshold=1,
        metrics_per_session=per_session,
    )
    sim.force("secret-a", 500)
    for _ in range(3):
        async with http.post(replica.proxy_url + CHAT, json=BODY) as response:
            await response.read()
    await settled(replica, 3)
    found = samples(await scrape(http, replica))
    assert value(found, "session_broker_pool_sessions", pool="default", state="open") == 1
    whose = {"pool": "default", "session": "a"} if per_session else {"pool": "default"}
    transitions = "session_broker_breaker_transitions_total"
    assert value(found, transitions, **whose, state="open") == 1
    breaker = {"pool": "default", "session": "a", "state": "open"}
    assert value(found, "session_broker_session_breaker", **breaker) == per_session


async def test_prefix_and_switch(start_replica: StartReplica, http: aiohttp.ClientSession) -> None:
    """METRICS_PREFIX renames every metric; ENABLE_METRICS=false takes /metrics away."""
    replica = await start_replica(metrics_prefix="edge")
    names = {f.name for f in text_string_to_metric_families(await scrape(http, replica))}
    ours = {n for n in names if not n.startswith("process_")}
    assert ours
    assert all(n.startswith("edge_") for n in ours), ours
    off = await start_replica(enable_metrics=False)
    async with http.get(f"{off.ops_url}/metrics") as response:
        assert response.status == 404


async def test_dashboard_uses_only_metrics_that_exist(
    start_replica: StartReplica, http: aiohttp.ClientSession
) -> None:
    """Every metric the Grafana dashboard queries is one the replica exports."""
    replica = await start_replica()
    async with http.post(replica.proxy_url + CHAT, json=BODY) as response:
        await response.read()
    suffixes = ("", "_total", "_bucket", "_count", "_sum")
    exported = {
        family.name + suffix
        for family in text_string_to_metric_families(await scrape(http, replica))
        for suffix in suffixes
    }
    dashboard = json.loads(DASHBOARD.read_text())
    queries = [
        target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])
    ]
    used = {name for q in queries for name in re.findall(r"session_broker_[a-z_]+", q)}
    assert used
    assert used <= exported, used - exported
    # Series are labelled by session only with METRICS_PER_SESSION, which it does not assume.
    assert not [q for q in queries if re.search(r"\bsession\b", q.replace("session_broker", ""))]
    by_kind = defaultdict(list)
    for panel in dashboard["panels"]:
        by_kind[panel["type"]].append(panel["title"])
    assert by_kind["timeseries"]


async def test_tier_and_unit_budget_gauges(
    start_replica: StartReplica,
    shared_redis: str,
    sim: SimulatedUpstream,
    http: aiohttp.ClientSession,
) -> None:
    """Two tiers, two sessions with a tpm: sessions per tier (available and size), the pool's
    tpm and units left, and with METRICS_PER_SESSION each budget's; the units an answer reported
    come off, and refill as the store's time passes."""
    replica = await start_replica(
        TIERED,
        redis_url=shared_redis,
        session_selection_strategy=Strategy.ROUND_ROBIN,
        usage_header="X-Usage-Tokens",
        metrics_per_session=True,
    )
    sim.force("secret-a", 200, {"X-Usage-Tokens": "30000"})
    before_ms = await store_now_ms(shared_redis)
    for _ in range(2):  # one each for a and b: tier 1 serves while it can
        async with http.post(replica.proxy_url + CHAT, json=BODY) as response:
            assert response.status == 200
    await settled(replica, 2)
    found = samples(await scrape(http, replica))
    after_ms = await store_now_ms(shared_redis)
    available, size = "session_broker_pool_tier_available", "session_broker_pool_tier_size"
    assert value(found, available, pool="default", tier="1") == 2
    assert value(found, size, pool="default", tier="1") == 2
    assert value(found, available, pool="default", tier="0") == 1
    assert value(found, size, pool="default", tier="0") == 1
    tpm = "session_broker_session_tpm"
    assert value(found, tpm, pool="default", session="a") == 60_000
    assert value(found, tpm, pool="default", session="c") == 30_000
    assert not [key for key in found if key[0] == tpm and ("session", "b") in key[1]]
    units = "session_broker_session_units_available"
    left = value(found, units, pool="default", session="a")
    # 30000 units took 30000 x 1.02 ms of a one-minute budget; at most that much has refilled.
    assert 0 < left <= (after_ms - before_ms + 60_000 - 30_600) / 1.02
    assert value(found, units, pool="default", session="c") == 29_411  # 30000 / 1.02: untouched
    replica.replica.metrics.cluster.read_at = None  # the next scrape reads the pool again
    for _ in range(250):  # until the store's clock is 100 ms on
        if await store_now_ms(shared_redis) > after_ms + 100:
            break
        await asyncio.sleep(0.02)
    refilled = samples(await scrape(http, replica))
    assert value(refilled, units, pool="default", session="a") >= left + 90
    by_pool = await start_replica(TIERED, redis_url=shared_redis)
    pooled = samples(await scrape(http, by_pool))
    assert value(pooled, "session_broker_pool_tpm", pool="default") == 90_000
    pool_left = value(pooled, "session_broker_pool_units_available", pool="default")
    assert left + 90 + 29_411 <= pool_left <= 90_000
    assert not [key for key in pooled if key[0] in (tpm, units)]


def census(available: int, *, units: dict[str, UnitBudget] | None = None) -> Census:
    return Census(
        now_ms=1,
        sessions={"total": 2, "available": available},
        leases=0,
        breakers={},
        tiers=[TierCount(priority=0, sessions=2, available=available)],
        units=units or {},
        sessions_read=2,
    )


async def test_one_collector_serves_several_pools() -> None:
    """The cluster gauges of each pool carry its name; a pool whose read fails is left out of
    the scrape while the others still show."""

    async def one() -> Census:
        counted = census(2, units={"x": UnitBudget(tpm=600, available=300)})
        counted.rate_sources = {"learned": 1, "none": 1}
        return counted

    async def two() -> Census:
        return census(1)

    async def down() -> Census:
        raise StoreError("the store is unreachable")

    collector = ClusterCollector("sb", {"one": one, "two": two, "down": down})
    registry = CollectorRegistry()
    registry.register(collector)
    await collector.refresh()
    found = samples(generate_latest(registry).decode())
    assert value(found, "sb_pool_sessions", pool="one", state="available") == 2
    assert value(found, "sb_pool_sessions", pool="two", state="available") == 1
    assert value(found, "sb_pool_size", pool="two") == 2
    assert value(found, "sb_pool_tier_available", pool="two", tier="0") == 1
    assert value(found, "sb_pool_units_available", pool="one") == 300
    assert value(found, "sb_pool_rate_sessions", pool="one", source="learned") == 1
    assert not [key for key in found if ("pool", "down") in key[1]]
    assert not [key for key in found if key[0] == "sb_pool_tpm" and ("pool", "two") in key[1]]


#: The issue's bar: a pool of 10,000 sessions (served by 20 replicas, each of which may use
#: every session); one replica exports fewer than SERIES_BAR series.
FLEET_SESSIONS = 10_000
SERIES_BAR = 5_000


def fleet_census(sessions: int) -> Census:
    """A large pool's census as the store gives it: OPS_SET_LIMIT ids per breaker state and
    budgets of the first OPS_SET_LIMIT sessions, five tiers."""
    ids = [f"s{n}" for n in range(sessions)]
    breakers = dict.fromkeys(ids[:OPS_SET_LIMIT], "open")
    breakers |= dict.fromkeys(ids[OPS_SET_LIMIT : 2 * OPS_SET_LIMIT], "half_open")
    return Census(
        now_ms=1,
        sessions={"total": sessions, "available": sessions // 2, "cooling": sessions // 4},
        leases=100,
        breakers=breakers,
        tiers=[TierCount(priority=p, sessions=None, available=100) for p in range(5)],
        units={i: UnitBudget(tpm=60_000, available=1_000) for i in ids[:OPS_SET_LIMIT]},
        sessions_read=OPS_SET_LIMIT,
    )


def series_after_fleet_traffic(metrics: Metrics, sessions: int = FLEET_SESSIONS) -> list[str]:
    """The series one replica exports after it used every session of the fleet's pool in
    every way a session can be used (each replica of a fleet may)."""
    for n in range(sessions):
        session = f"s{n}"
        for outcome in Outcome:
            metrics.lease_taken()
            metrics.lease_released("default", session, outcome, exhausted=True)
        metrics.transitions(
            Transition("default", session, kind, old, new)
            for kind, old, new in (
                ("state", "available", "cooling"),
                ("breaker", "closed", "open"),
                ("breaker", "open", "half_open"),
                ("breaker", "half_open", "closed"),
            )
        )
    for status in (200, 400, 401, 429, 500, 502, 503, 504):
        metrics.request_done(status, 2, 0.001)
    metrics.cluster.censuses = {"default": fleet_census(sessions)}
    text = generate_latest(metrics.registry).decode()
    return [line for line in text.splitlines() if line and not line.startswith("#")]


def test_series_scale_with_the_fleet_not_the_pool() -> None:
    """At 10,000 sessions and 20 replicas each replica exports fewer than 5,000 series, however
    many of the sessions it used (a replica's series do not depend on the other replicas): no
    per-session labels unless asked for, no _created series, no state that sums the others."""
    series = series_after_fleet_traffic(Metrics("session_broker"))
    assert len(series) < SERIES_BAR
    assert not [line for line in series if "_created" in line.partition("{")[0]]
    assert not [line for line in series if 'session="' in line]
    assert not [line for line in series if 'state="total"' in line]
    # What the setting costs, and why it is off: a tenth of the pool is already past the bar.
    opted_in = series_after_fleet_traffic(
        Metrics("session_broker", per_session=True), FLEET_SESSIONS // 10
    )
    assert len(opted_in) > SERIES_BAR


class CollectProbe(Collector):
    """Records the thread each collection runs on."""

    def __init__(self) -> None:
        self.threads: list[int] = []

    def collect(self) -> Iterator[Metric]:
        self.threads.append(threading.get_ident())
        time.sleep(0.05)  # long enough for the scrapes below to overlap
        return iter(())


async def test_rendering_runs_off_the_event_loop() -> None:
    """/metrics is rendered in a worker thread, once for the scrapes that arrive together or
    while the last rendering is younger than render_max_age_s."""
    metrics = Metrics("sb")
    probe = CollectProbe()
    metrics.registry.register(probe)
    texts = await asyncio.gather(*(metrics.exposition() for _ in range(5)))
    assert len(set(texts)) == 1
    assert len(probe.threads) == 1
    assert probe.threads[0] != threading.get_ident()
    await metrics.exposition()
    assert len(probe.threads) == 1  # fresh enough: the same text
    metrics.render_max_age_s = 0.0
    await metrics.exposition()
    assert len(probe.threads) == 2  # a later scrape renders afresh
