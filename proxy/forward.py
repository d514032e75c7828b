"""Forwarding: one client request, up to RETRY_COUNT upstream attempts, each on its own lease.

acquire (never a session this request already tried)
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
from proxy.body import BodyTooLarge, ReplayableBody
from proxy.ratelimit_headers import exhausted_ms, nonnegative_number
from proxy.replica import REPLICA, Replica
from proxy.responses import error_response
from proxy.retry_after import retry_after_ms
from proxy.usage import UsageMeter

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
def _never_forwarded(session_header: str) -> frozenset[str]:
    """Client headers never passed on: its credentials, and whatever it sent under the name the
    session's secret goes in."""
    return CLIENT_CREDENTIALS | {session_header.lower()}


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
        self.tried: set[str] = set()
        limit = self.settings.max_body_bytes
        self.body = ReplayableBody(request.content, limit) if request.body_exists else None
        # Only the configured upstream: the client's path and query, never its Host or an
        # absolute URI; encoded=True keeps the path byte for byte.
        self.url = URL(replica.upstream_url + request.rel_url.raw_path_qs, encoded=True)
        self.header = replica.session_header
        self.outgoing = _drop(request.headers.items(), _never_forwarded(self.header.name))
        self.outgoing["X-Request-ID"] = request_id
        self.families = replica.header_families
        self.usage_header = self.settings.usage_header
        # Which pool granted each lease (the shared one, or the local fallback in an outage).
        self.pools: dict[str, Pool] = {}
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
        if self.body is not None and self.request.content_length is None:
            try:
                await self.body.read_all()
            except BodyTooLarge:
                return self._too_large()
        last: Failure | None = None
        for attempt in range(self.replica.max_attempts):
            if last is not None and last.backoff:
                await self._backoff(attempt)
            try:
                lease, secret = await self._lease()
            except NoSessionAvailable as exc:
                if last is not None and exc.reason == "tried":
                    return last.response
                return self._unavailable(exc)
            except StoreError:
                return error_response(
                    503, "store_unavailable", "the session store is unreachable; retry later"
                )
            final = attempt == self.replica.max_attempts - 1
            result = await self._attempt(lease, secret, final=final)
            if isinstance(result, web.StreamResponse):
                return result
            last = result
        assert last is not None  # max_attempts >= 1
        return last.response

    async def _lease(self) -> tuple[Lease, str]:
        """A lease on a session this replica holds the secret of; raises NoSessionAvailable."""
        while True:
            wait_s = max(0.0, self.wait_until - time.monotonic())
            lease, pool = await self.replica.leasing.lease(exclude=self.tried, timeout_s=wait_s)
            self.pools[lease.lease_id] = pool
            self.replica.metrics.lease_taken()
            log.debug(
                "session selected",
                session=lease.session_id,
                probe=lease.probe,
                skipped_as_tried=sorted(self.tried),
            )
            self.tried.add(lease.session_id)
            secret = self.replica.secrets.get(lease.session_id)
            if secret is not None:
                return lease, secret
            # The store lists a session this replica's configuration does not have (replicas
            # disagree for a moment during a rollout): hand it back untouched, lease another.
            log.info("session unknown to this replica; skipped", session=lease.session_id)
            self._release(lease, Outcome.UNUSED, -1)

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
        self, lease: Lease, secret: str, *, final: bool
    ) -> web.StreamResponse | Failure:
        headers = self.outgoing.copy()
        headers[self.header.name] = self.header.value(secret)
        self.attempts += 1
        started = time.monotonic()
        try:
            upstream = await self.replica.client.request(
                self.request.method,
                self.url,
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
        return await self._stream(lease, upstream, outcome, waits, started)

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
                lease, outcome, _ms_since(started), waits=waits, detail=str(upstream.status)
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
        lease: Lease,
        upstream: aiohttp.ClientResponse,
        outcome: Outcome,
        waits: Waits,
        started: float,
    ) -> web.StreamResponse:
        response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
        response.headers.extend(_drop(upstream.headers.items(), UPSTREAM_ONLY))
        response.headers["X-Request-ID"] = self.request_id
        renewal = _Renewal(self, lease)
        detail = str(upstream.status)
        broken = False
        # Only a session with a unit budget needs its usage read from the answer.
        metered = lease.session_id in self.replica.metered_sessions
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
                units=usage.units() if usage is not None else None,
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
                lease = await self.pools[lease.lease_id].renew(lease)
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
        self.replica.metrics.lease_released(lease.session_id, outcome, exhausted=exhausted)
        release = Release(
            lease, outcome, latency_ms, waits.retry_after_ms, waits.exhausted_ms, detail, units
        )
        self.replica.releases.submit(self.pools[lease.lease_id], release)


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
