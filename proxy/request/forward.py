"""Forwarding: one client request, up to RETRY_COUNT upstream attempts, each on its own lease.

route to a pool (proxy.replica.pools) -> for each attempt:
acquire from the pool, else from its fallbacks in turn, else wait on the pool (never a session this
request already tried)
  -> send with the session's secret -> classify the answer -> release with the outcome
retry on 429 (at once, on another session), 401/403, 5xx and network errors (after backoff),
only while nothing has been sent to the client; the last attempt's answer goes back as it is.
"""

from __future__ import annotations

import asyncio
import random
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache

import aiohttp
import structlog
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from broker import Lease, LeaseError, NoSessionAvailable, Outcome, Pool, Release, StoreError
from proxy.replica.pools import NoRoute, PoolPlan, Routed, requested_model
from proxy.replica.replica import REPLICA, Replica
from proxy.request.body import BodyTooLarge, ReplayableBody
from proxy.request.estimate import estimate_units
from proxy.request.ratelimit_headers import exhausted_ms, nonnegative_number
from proxy.request.responses import error_response
from proxy.request.retry_after import retry_after_ms
from proxy.request.usage import UsageMeter

log = structlog.get_logger(__name__)

#: Hop-by-hop headers (RFC 9110 section 7.6.1) and Host: they describe one connection, not the
#: message, so they are never passed on.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
    }
)
#: Credentials a client may send: they are for this proxy (PROXY_API_KEYS) or nobody, never for
#: the upstream, which only ever sees the leased session's secret.
CLIENT_CREDENTIALS = frozenset(
    {"authorization", "proxy-authorization", "proxy-authenticate", "cookie", "x-api-key", "api-key"}
)
#: Headers of an upstream answer kept from the client: with web-session credentials an upstream
#: may rotate the session's cookie, which is a secret.
UPSTREAM_ONLY = frozenset({"set-cookie", "set-cookie2"})
#: Most bytes of a failed attempt's answer kept to replay if no further attempt is possible.
FAILED_BODY_LIMIT = 64 * 1024
#: The longest X-Request-ID passed through; longer or unprintable ones are replaced.
REQUEST_ID_MAX = 128


def outcome_of(status: int) -> Outcome:
    """What an upstream status says about the session (other 4xx are the client's own fault)."""
    if status == 429:
        return Outcome.RATE_LIMITED
    if status in (401, 403):
        return Outcome.AUTH
    if status >= 500:
        return Outcome.SERVER
    return Outcome.SUCCESS


def request_id_of(headers: CIMultiDictProxy[str]) -> str:
    given = headers.get("X-Request-ID", "")
    if 0 < len(given) <= REQUEST_ID_MAX and given.isascii() and given.isprintable():
        return given
    return secrets.token_hex(16)  # the shape of a uuid4().hex, for a fraction of its cost


@cache
def _never_forwarded(names: tuple[str, ...]) -> frozenset[str]:
    """Client headers never passed on: its credentials, and whatever it sent under ``names``:
    those the sessions' secrets go in, and the pool header (which is for this proxy)."""
    return CLIENT_CREDENTIALS | {name.lower() for name in names}


def _drop(headers: Iterable[tuple[str, str]], extra: frozenset[str]) -> CIMultiDict[str]:
    kept: CIMultiDict[str] = CIMultiDict()
    items = list(headers)
    named = {
        token.strip().lower()
        for name, value in items
        if name.lower() == "connection"
        for token in value.split(",")
    }
    for name, value in items:
        lowered = name.lower()
        if lowered not in HOP_BY_HOP and lowered not in extra and lowered not in named:
            kept.add(name, value)
    return kept


#: How the proxy answers when no session can serve, by NoSessionAvailable.reason.
UNAVAILABLE = {
    "cooling": (
        429,
        "all_sessions_cooling",
        "every upstream session is cooling down after a rate limit; retry later",
    ),
    "quota": (
        429,
        "all_sessions_at_quota",
        "every upstream session has used its request quota for now; retry later",
    ),
    "open": (
        503,
        "all_sessions_failing",
        "the upstream is failing for every session (circuit breakers open); retry later",
    ),
    "busy": (
        503,
        "all_sessions_busy",
        "every upstream session is at its concurrency limit; retry later",
    ),
    "tried": (503, "no_session_left", "every available session was tried for this request"),
    "queued": (503, "requests_queued", "older requests are waiting for a session; retry later"),
    "disabled": (503, "no_session_enabled", "no upstream session is enabled"),
}


@dataclass(frozen=True, slots=True)
class Waits:
    """What an answer says about waiting: its Retry-After, and how long until its rate-limit
    headers say the session has quota again (when they say none is left)."""

    retry_after_ms: int | None
    exhausted_ms: int | None


NO_WAITS = Waits(None, None)


@dataclass(frozen=True, slots=True)
class Leased:
    """A lease with the pool object that granted it and the pool's plan (upstream, header)."""

    lease: Lease
    pool: Pool
    plan: PoolPlan


@dataclass(frozen=True, slots=True)
class Failure:
    """A retryable attempt that failed; replayed to the client if no other attempt can follow."""

    response: web.Response
    backoff: bool


class Forwarder:
    """Handles one client request."""

    def __init__(self, replica: Replica, request: web.Request, request_id: str) -> None:
        self.replica = replica
        self.settings = replica.settings
        self.request = request
        self.request_id = request_id
        self.table = replica.table  # one request keeps the pools it started with
        #: Session ids this request tried, per pool.
        self.tried: dict[str, set[str]] = {}
        limit = self.settings.max_body_bytes
        self.body = ReplayableBody(request.content, limit) if request.body_exists else None
        self.families = replica.header_families
        self.usage_header = self.settings.usage_header
        # Set once the request is routed (run).
        self.routed: Routed | None = None
        self.chain: list[PoolPlan] = []
        self.outgoing: CIMultiDict[str] = CIMultiDict()
        self.estimate = 0
        # Which pool granted each lease (a shared one, or the local fallback in an outage).
        self.leases: dict[str, Leased] = {}
        wait_s = self.settings.queue_timeout
        asked = nonnegative_number(request.headers.get("X-Request-Timeout"))
        if asked is not None:
            wait_s = min(wait_s, asked)
        self.wait_until = time.monotonic() + wait_s
        # Metrics: attempts made, and time spent waiting (upstream, backoff) versus in the proxy.
        self.attempts = 0
        self.started = time.monotonic()
        self.waited_s = 0.0
        self.overhead_s: float | None = None

    async def run(self) -> web.StreamResponse:
        if (self.request.content_length or 0) > self.settings.max_body_bytes:
            return self._too_large()
        try:
            if self.body is not None and self.request.content_length is None:
                await self.body.read_all()
            routed = await self._route()
        except BodyTooLarge:
            return self._too_large()
        except NoRoute as exc:
            return error_response(404, exc.code, exc.message)
        self._routed(routed)
        if self.settings.unit_precharge == "estimate" and any(p.metered for p in self.chain):
            try:
                self.estimate = estimate_units(await self.body.read_bytes()) if self.body else 0
            except BodyTooLarge:
                return self._too_large()
        last: Failure | None = None
        attempts = routed.plan.max_attempts
        for attempt in range(attempts):
            if last is not None and last.backoff:
                await self._backoff(attempt)
            try:
                leased, secret = await self._lease()
            except NoSessionAvailable as exc:
                if last is not None and exc.reason == "tried":
                    return last.response
                return self._unavailable(exc)
            except StoreError:
                return error_response(
                    503, "store_unavailable", "the session store is unreachable; retry later"
                )
            final = attempt == attempts - 1
            result = await self._attempt(leased, secret, final=final)
            if isinstance(result, web.StreamResponse):
                return result
            last = result
        assert last is not None  # max_attempts >= 1
        return last.response

    async def _route(self) -> Routed:
        """The pool this request goes to: named by the pool header, by a path prefix, by the
        JSON body's model, else the default one. Raises NoRoute."""
        table = self.table
        named = self.request.headers.get(table.header) if table.header else None
        path_qs = self.request.rel_url.raw_path_qs
        routed = table.route(named=named, path_qs=path_qs)
        if routed is not None:
            return routed
        model = None
        if table.routes_by_model and self.body is not None:
            model = requested_model(await self.body.read_bytes())
        return table.route_model(model, path_qs=path_qs)

    def _routed(self, routed: Routed) -> None:
        self.routed = routed
        self.chain = self.table.chain(routed.plan.name)
        names = tuple(plan.header.name for plan in self.chain)
        if self.table.header is not None:
            names += (self.table.header,)
        self.outgoing = _drop(self.request.headers.items(), _never_forwarded(names))
        self.outgoing["X-Request-ID"] = self.request_id

    async def _lease(self) -> tuple[Leased, str]:
        """A lease on a session this replica holds the secret of; raises NoSessionAvailable."""
        while True:
            leased = await self._lease_in_chain()
            lease = leased.lease
            self.leases[lease.lease_id] = leased
            self.replica.metrics.lease_taken()
            tried = self.tried.setdefault(leased.plan.name, set())
            log.debug(
                "session selected",
                pool=leased.plan.name,
                session=lease.session_id,
                probe=lease.probe,
                skipped_as_tried=sorted(tried),
            )
            tried.add(lease.session_id)
            secret = leased.plan.secrets.get(lease.session_id)
            if secret is not None:
                return leased, secret
            # The store lists a session this replica's configuration does not have (replicas
            # disagree for a moment during a rollout): hand it back untouched, lease another.
            log.info("session unknown to this replica; skipped", session=lease.session_id)
            self._release(lease, Outcome.UNUSED, -1)

    async def _lease_in_chain(self) -> Leased:
        """From the routed pool; when it has nothing, from each fallback in turn; when none
        has, wait on the routed pool (up to the queue timeout)."""
        wait_s = max(0.0, self.wait_until - time.monotonic())
        primary = self.chain[0]
        if len(self.chain) == 1:
            return await self._lease_from(primary, wait_s)
        refused: NoSessionAvailable | None = None
        for plan in self.chain:
            try:
                leased = await self._lease_from(plan, 0.0)
            except NoSessionAvailable as exc:
                refused = refused or exc
                continue
            if plan is not primary:
                log.debug("served by a fallback pool", pool=plan.name, routed=primary.name)
                self.replica.metrics.fallback_taken(primary.name, plan.name)
            return leased
        assert refused is not None
        if wait_s <= 0 or refused.reason in ("tried", "disabled"):
            raise refused
        return await self._lease_from(primary, wait_s)

    async def _lease_from(self, plan: PoolPlan, wait_s: float) -> Leased:
        lease, pool = await self.replica.leasing.lease(
            plan.name,
            exclude=self.tried.get(plan.name, ()),
            timeout_s=wait_s,
            precharge=self.estimate if plan.metered else 0,
        )
        return Leased(lease, pool, plan)

    async def _backoff(self, attempt: int) -> None:
        if not self.settings.exponential_backoff_enabled:
            return
        ceiling = min(self.settings.backoff_max, self.settings.backoff_base * 2 ** (attempt - 1))
        pause = random.uniform(0, ceiling)  # full jitter
        self.waited_s += pause
        await asyncio.sleep(pause)

    def _too_large(self) -> web.Response:
        limit = self.settings.max_body_bytes
        return error_response(413, "request_too_large", f"request body over {limit} bytes")

    def _unavailable(self, exc: NoSessionAvailable) -> web.Response:
        log.debug(  # one per refused request: too many for info under overload
            "no session available",
            reason=exc.reason,
            retry_after_ms=exc.retry_after_ms,
            sessions=exc.counts,
        )
        status, code, message = UNAVAILABLE.get(exc.reason, UNAVAILABLE["disabled"])
        retry_after = exc.retry_after_ms if exc.reason != "disabled" else None
        return error_response(status, code, message, retry_after_ms=retry_after)

    async def _attempt(
        self, leased: Leased, secret: str, *, final: bool
    ) -> web.StreamResponse | Failure:
        lease, plan = leased.lease, leased.plan
        headers = self.outgoing.copy()
        headers[plan.header.name] = plan.header.value(secret)
        assert self.routed is not None
        # Only the pool's upstream: the client's path and query, never its Host or an absolute
        # URI; encoded=True keeps the path byte for byte.
        url = URL(plan.upstream_url + self.routed.path_qs, encoded=True)
        self.attempts += 1
        started = time.monotonic()
        try:
            upstream = await self.replica.client.request(
                self.request.method,
                url,
                headers=headers,
                data=self.body.payload() if self.body is not None else None,
                allow_redirects=False,
            )
        except BodyTooLarge:
            self._release(lease, Outcome.SUCCESS, -1)
            return self._too_large()
        except TimeoutError:
            self._release(lease, Outcome.TIMEOUT, _ms_since(started), detail="connect/read timeout")
            return Failure(error_response(504, "upstream_timeout", "upstream timed out"), True)
        except aiohttp.ClientError as exc:
            if self._client_gone():
                # Sending failed because the client's own body stopped coming: not the session's
                # fault, and counting it would trip a healthy session's breaker.
                self._release(lease, Outcome.UNUSED, _ms_since(started))
                raise asyncio.CancelledError from exc
            self._release(lease, Outcome.NETWORK, _ms_since(started), detail=type(exc).__name__)
            return Failure(
                error_response(502, "upstream_unreachable", "upstream unreachable"), True
            )
        except asyncio.CancelledError:
            # The client left before the upstream answered: nothing is known of the session.
            self._release(lease, Outcome.UNUSED, _ms_since(started))
            raise
        answered_s = time.monotonic() - started
        self.waited_s += answered_s
        self.replica.metrics.upstream_answered(answered_s)
        outcome = outcome_of(upstream.status)
        now_s = time.time()
        waits = Waits(
            retry_after_ms(upstream.headers, now_s),
            exhausted_ms(upstream.headers, now_s, self.families) if self.families else None,
        )
        if outcome is not Outcome.SUCCESS and not final:
            return await self._fail(lease, upstream, outcome, waits, started)
        return await self._stream(leased, upstream, outcome, waits, started)

    def _client_gone(self) -> bool:
        transport = self.request.transport
        return transport is None or transport.is_closing()

    async def _fail(
        self,
        lease: Lease,
        upstream: aiohttp.ClientResponse,
        outcome: Outcome,
        waits: Waits,
        started: float,
    ) -> Failure:
        body = b""
        try:
            body = await upstream.content.read(FAILED_BODY_LIMIT)
        except (aiohttp.ClientError, TimeoutError):
            pass  # the status says enough; the body is only kept for a replay
        finally:
            upstream.close()
            self._release(
                lease,
                outcome,
                _ms_since(started),
                waits=waits,
                detail=str(upstream.status),
                units=_refused_units(outcome),
            )
        log.info(
            "attempt failed",
            session=lease.session_id,
            status=upstream.status,
            outcome=outcome.value,
            retry_after_ms=waits.retry_after_ms,
        )
        # The body is replayed as received (Content-Encoding kept); its length is recomputed.
        headers = _drop(upstream.headers.items(), UPSTREAM_ONLY | {"content-length"})
        replay = web.Response(status=upstream.status, body=body, headers=headers)
        return Failure(replay, backoff=outcome is Outcome.SERVER)

    async def _stream(
        self,
        leased: Leased,
        upstream: aiohttp.ClientResponse,
        outcome: Outcome,
        waits: Waits,
        started: float,
    ) -> web.StreamResponse:
        response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
        response.headers.extend(_drop(upstream.headers.items(), UPSTREAM_ONLY))
        response.headers["X-Request-ID"] = self.request_id
        lease = leased.lease
        renewal = _Renewal(self, lease)
        detail = str(upstream.status)
        broken = False
        # Only a session with a unit budget needs its usage read from the answer.
        metered = lease.session_id in leased.plan.metered
        usage = UsageMeter(upstream.headers, self.usage_header) if metered else None
        try:
            self.headers_out()
            await response.prepare(self.request)
            content = upstream.content
            if content.is_eof() and content.exception() is None:
                # The whole answer came with its headers (a short one usually does): it leaves
                # with the answer's headers and its end in one write.
                chunk = content.read_nowait()
                if usage is not None:
                    usage.feed(chunk)
                await response.write_eof(chunk)
            else:
                async for chunk in content.iter_any():
                    await response.write(chunk)
                    if usage is not None:
                        usage.feed(chunk)
                await response.write_eof()
        except TimeoutError:
            outcome, detail, broken = Outcome.TIMEOUT, "read timeout mid-response", True
        except aiohttp.ClientPayloadError as exc:
            outcome, detail, broken = Outcome.NETWORK, type(exc).__name__, True
        except ConnectionResetError:
            log.info("client went away mid-response", session=lease.session_id)
        finally:
            renewal.cancel()
            upstream.close()
            self._release(
                lease,
                outcome,
                _ms_since(started),
                waits=waits,
                detail=detail,
                units=usage.units() if usage is not None else _refused_units(outcome),
            )
        if broken:
            # The client must not take a cut-off body for a whole one: drop the connection.
            log.warning("upstream broke mid-response", session=lease.session_id, detail=detail)
            if self.request.transport is not None:
                self.request.transport.close()
        return response

    def headers_out(self) -> None:
        """The answer's headers leave now: what the proxy itself took so far is its overhead."""
        if self.overhead_s is None:
            self.overhead_s = time.monotonic() - self.started - self.waited_s

    async def _renew(self, lease: Lease) -> None:
        period = self.settings.lease_ttl / 3
        while True:
            try:
                lease = await self.leases[lease.lease_id].pool.renew(lease)
            except LeaseError:
                log.warning("lease lost during a long response", session=lease.session_id)
                return
            except StoreError as exc:
                self.replica.leasing.mark_down(exc)
            await asyncio.sleep(period)

    def _release(
        self,
        lease: Lease,
        outcome: Outcome,
        latency_ms: int,
        *,
        waits: Waits = NO_WAITS,
        detail: str = "",
        units: int | None = None,
    ) -> None:
        """Release in the background: it must land even when this request is being cancelled."""
        exhausted = waits.exhausted_ms is not None
        self.replica.metrics.lease_released(
            lease.pool, lease.session_id, outcome, exhausted=exhausted
        )
        leased = self.leases[lease.lease_id]
        if units is None and lease.session_id not in leased.plan.metered:
            units = 0  # a pre-charge stands only against a unit budget
        release = Release(
            lease, outcome, latency_ms, waits.retry_after_ms, waits.exhausted_ms, detail, units
        )
        self.replica.releases.submit(leased.pool, release)


class _Renewal:
    """Renews a lease every LEASE_TTL/3 while its answer streams. Most answers end sooner: for
    them only a timer was set, no task made; the renewing task starts when the first renewal is
    due."""

    __slots__ = ("_forwarder", "_lease", "_task", "_timer")

    def __init__(self, forwarder: Forwarder, lease: Lease) -> None:
        self._forwarder = forwarder
        self._lease = lease
        self._task: asyncio.Task[None] | None = None
        period = forwarder.settings.lease_ttl / 3
        self._timer = asyncio.get_running_loop().call_later(period, self._start)

    def _start(self) -> None:
        self._task = asyncio.create_task(self._forwarder._renew(self._lease))

    def cancel(self) -> None:
        self._timer.cancel()
        if self._task is not None:
            self._task.cancel()


def _refused_units(outcome: Outcome) -> int | None:
    """Units to report for an answer without usage: none when the upstream refused the request
    for its rate limit (a pre-charge is refunded), else None (a pre-charge stands)."""
    return 0 if outcome is Outcome.RATE_LIMITED else None


def _ms_since(started: float) -> int:
    return round((time.monotonic() - started) * 1000)


async def handle(request: web.Request) -> web.StreamResponse:
    """The proxy's only route: every method, every path."""
    replica: Replica = request.app[REPLICA]
    request_id = request_id_of(request.headers)
    structlog.contextvars.bind_contextvars(request_id=request_id)
    try:
        if replica.draining:
            response: web.StreamResponse = error_response(
                503, "shutting_down", "this replica is shutting down; retry on another"
            )
        else:
            async with replica.tracking():
                forwarder = Forwarder(replica, request, request_id)
                response = await forwarder.run()
                if not response.prepared:
                    forwarder.headers_out()
                replica.metrics.request_done(
                    response.status, forwarder.attempts, forwarder.overhead_s
                )
        if not response.prepared:
            response.headers["X-Request-ID"] = request_id
        return response
    finally:
        structlog.contextvars.unbind_contextvars("request_id")
