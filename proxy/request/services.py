"""What the request path is given by its replica, and nothing more: the pools in use, where
leases come from and go back to, the metrics hooks, the upstream client and the few settings it
reads. Each is a narrow Protocol or a frozen dataclass, so the request path never reaches into
the replica (proxy.replica.replica), and a test or another host can hand it its own.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Protocol

import aiohttp

from broker import Lease, Outcome, Release
from broker.shards import AnyPool
from proxy.config.pools import PoolTable
from proxy.config.settings import Settings

__all__ = [
    "Admission",
    "AsSent",
    "LeaseSource",
    "PoolsInUse",
    "ReleaseSink",
    "RequestMetrics",
    "RequestSettings",
    "Services",
    "open_upstream_client",
]


class PoolsInUse(Protocol):
    """The pools served now: a reload swaps the table whole; a request keeps the one it
    started with."""

    @property
    def table(self) -> PoolTable: ...


class LeaseSource(Protocol):
    """Where leases come from (the shared pools, or the local ones in an outage)."""

    async def lease(
        self, name: str, *, exclude: Collection[str], timeout_s: float, precharge: int = 0
    ) -> tuple[Lease, AnyPool]: ...

    def mark_down(self, exc: BaseException) -> None: ...


class ReleaseSink(Protocol):
    """Where releases go: sent in the background, so a cancelled request still lands its own."""

    def submit(self, pool: AnyPool, release: Release) -> None: ...


class RequestMetrics(Protocol):
    """The metrics hooks the request path calls."""

    def lease_taken(self) -> None: ...

    def fallback_taken(self, pool: str, fallback: str) -> None: ...

    def upstream_answered(self, seconds: float) -> None: ...

    def lease_released(
        self, pool: str, session_id: str, outcome: Outcome, *, exhausted: bool
    ) -> None: ...

    def request_done(self, status: int, attempts: int, overhead_s: float | None) -> None: ...


class Admission(Protocol):
    """Whether new requests are taken (not while draining), and the count of those in flight."""

    @property
    def draining(self) -> bool: ...

    def tracking(self) -> AbstractAsyncContextManager[None]: ...


@dataclass(frozen=True, slots=True)
class RequestSettings:
    """The settings the request path reads."""

    max_body_bytes: int
    body_timeout_s: float
    queue_timeout_s: float
    precharge_estimate: bool
    backoff: bool
    backoff_base_s: float
    backoff_max_s: float
    lease_ttl_s: float
    usage_header: str
    header_families: tuple[str, ...]
    connect_timeout_s: float
    read_timeout_s: float

    @classmethod
    def of(cls, settings: Settings) -> RequestSettings:
        return cls(
            max_body_bytes=settings.max_body_bytes,
            body_timeout_s=settings.body_timeout,
            queue_timeout_s=settings.queue_timeout,
            precharge_estimate=settings.unit_precharge == "estimate",
            backoff=settings.exponential_backoff_enabled,
            backoff_base_s=settings.backoff_base,
            backoff_max_s=settings.backoff_max,
            lease_ttl_s=settings.lease_ttl,
            usage_header=settings.usage_header,
            header_families=settings.header_families,
            connect_timeout_s=settings.upstream_connect_timeout,
            read_timeout_s=settings.upstream_read_timeout,
        )


@dataclass(frozen=True, slots=True)
class Services:
    """Everything one request needs, once the replica has started."""

    settings: RequestSettings
    pools: PoolsInUse
    leasing: LeaseSource
    releases: ReleaseSink
    metrics: RequestMetrics
    client: aiohttp.ClientSession


class AsSent(aiohttp.ClientRequest):
    """An upstream request with the client's headers as they came: none of the HTTP client's
    automatic ``Accept``, ``Accept-Encoding`` (which would get the client a compressed body it
    never asked for) and ``User-Agent``. What ``skip_auto_headers`` naming the three does,
    without the two header multidicts that option builds for every request (a third of the cost
    of making the request object)."""

    def update_auto_headers(self, skip_auto_headers: Iterable[str] | None) -> None:
        """Add nothing."""


def open_upstream_client(settings: RequestSettings) -> aiohttp.ClientSession:
    """The pooled client every attempt goes upstream with."""
    timeout = aiohttp.ClientTimeout(
        total=None, sock_connect=settings.connect_timeout_s, sock_read=settings.read_timeout_s
    )
    return aiohttp.ClientSession(
        timeout=timeout,
        auto_decompress=False,  # bytes pass through as the upstream encoded them
        connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=30),
        cookie_jar=aiohttp.DummyCookieJar(),  # never keep one client's cookies for another
        request_class=AsSent,  # send what the client sent
    )
