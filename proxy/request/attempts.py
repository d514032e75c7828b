"""The attempt loop of one request: lease -> send -> classify -> release -> retry or answer.

Each attempt leases from the routed pool, else from each of its fallbacks in turn, else waits on
the routed pool up to the queue timeout -- never a session this request already tried. It sends
with the session's secret, classifies the answer, and releases with that outcome. It retries on
429 (at once, on another session), 401/403, 5xx and network errors (after a backoff), only while
nothing has been sent to the client; the last attempt's answer goes back as it is. A 401/403
that a second session gave too is the request's answer: it goes back at once
(proxy.request.judgement).

Each attempt runs inside its lease's ``async with`` (proxy.request.lease), which releases the lease
whatever ends the attempt. An exception no step expected (a bug) ends only its attempt: logged
(rate-limited), and while nothing has been sent to the client the request moves on to another
session, the last one answering 502; never a 500 with a traceback.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from dataclasses import dataclass

import aiohttp
import structlog
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from broker import NoSessionAvailable, Outcome, StoreError
from proxy.config.pools import PoolPlan
from proxy.request.body import BodyTimeout, BodyTooLarge, ReplayableBody
from proxy.request.headers import first_not_utf8
from proxy.request.judgement import AuthRefusals, outcome_of, request_kind
from proxy.request.lease import HeldLease, Waits
from proxy.request.ratelimit_headers import exhausted_ms, stated_rpm
from proxy.request.responses import (
    body_timeout,
    error_response,
    header_not_utf8,
    no_session,
    too_large,
)
from proxy.request.retry_after import retry_after_ms
from proxy.request.routing import Routed
from proxy.request.services import Services
from proxy.request.streaming import Answer, Failure, Streaming, keep_failed, stream_answer
from proxy.request.timing import Timing
from proxy.telemetry.logs import client_mistake, proxy_fault

__all__ = ["Attempts", "Plan"]

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class Plan:
    """What every attempt of one request sends, and until when it may wait for a session."""

    routed: Routed
    #: The routed pool, then its fallbacks.
    chain: list[PoolPlan]
    headers: CIMultiDict[str]
    body: ReplayableBody | None
    #: Units pre-charged to a metered session (0: none).
    estimate: int
    wait_until: float


class Attempts:
    """The attempts of one client request."""

    def __init__(
        self,
        services: Services,
        request: web.Request,
        plan: Plan,
        *,
        timing: Timing,
        streaming: Streaming,
    ) -> None:
        self.services = services
        self.request = request
        self.plan = plan
        self.timing = timing
        self.streaming = streaming
        #: Session ids this request tried, per pool.
        self.tried: dict[str, set[str]] = {}
        self.made = 0
        #: What the store's 401/403 judgement is told of this request.
        self.kind = request_kind(request.method, plan.routed.path_qs)
        self.refusals = AuthRefusals()

    async def run(self) -> web.StreamResponse:
        last: Failure | None = None
        attempts = self.plan.routed.plan.max_attempts
        for attempt in range(attempts):
            if last is not None and last.backoff:
                await self._backoff(attempt)
            try:
                result = await self._next(final=attempt == attempts - 1)
            except NoSessionAvailable as exc:
                if last is not None and exc.reason == "tried":
                    return last.response
                return no_session(exc)
            except StoreError as exc:
                message = f"{exc.failure.message}; retry later"
                return error_response(503, "store_unavailable", message)
            if isinstance(result, web.StreamResponse):
                return result
            last = result
        assert last is not None  # max_attempts >= 1
        return last.response

    async def _next(self, *, final: bool) -> web.StreamResponse | Failure:
        """One attempt on a lease of its own, released whatever happens; a session this replica
        holds no secret for is handed back and another leased. Raises NoSessionAvailable."""
        while True:
            held = await self._lease_in_chain()
            try:
                async with held:
                    secret = self._secret(held)
                    if secret is None:
                        held.release(Outcome.UNUSED, latency_ms=-1)
                        continue
                    return await self._attempt(held, secret, final=final)
            except Exception as exc:  # asyncio.CancelledError (the client left) is no Exception
                return self._broken(held, exc)

    def _secret(self, held: HeldLease) -> str | None:
        """The secret of the leased session, noted as tried; None when this replica's
        configuration does not have it (replicas disagree for a moment during a rollout)."""
        lease = held.lease
        self.services.metrics.lease_taken()
        tried = self.tried.setdefault(held.plan.name, set())
        if log.is_enabled_for(logging.DEBUG):  # its fields cost more than the call itself
            log.debug(
                "session selected",
                pool=held.plan.name,
                session=lease.session_id,
                probe=lease.probe,
                skipped_as_tried=sorted(tried),
            )
        tried.add(lease.session_id)
        secret = held.plan.secrets.get(lease.session_id)
        if secret is None:
            log.info("session unknown to this replica; skipped", session=lease.session_id)
        return secret

    def _broken(self, held: HeldLease, exc: Exception) -> web.StreamResponse | Failure:
        """What the client gets when an attempt failed in the proxy itself (its lease was
        released on the way out): another session's try while nothing has been sent, else the
        answer cut off as a broken upstream's is."""
        proxy_fault("attempt failed in the proxy", exc, session=held.lease.session_id)
        response = held.response
        if response is not None and response.prepared:
            # The client must not take a cut-off answer for a whole one: drop the connection.
            if self.request.transport is not None:
                self.request.transport.close()
            return response
        message = "the proxy could not complete the upstream call"
        return Failure(error_response(502, "proxy_error", message), backoff=False)

    async def _lease_in_chain(self) -> HeldLease:
        """From the routed pool; when it has nothing, from each fallback in turn; when none
        has, wait on the routed pool (up to the queue timeout)."""
        chain = self.plan.chain
        wait_s = max(0.0, self.plan.wait_until - time.monotonic())
        primary = chain[0]
        if len(chain) == 1:
            return await self._lease_from(primary, wait_s)
        refused: NoSessionAvailable | None = None
        for pool_plan in chain:
            try:
                held = await self._lease_from(pool_plan, 0.0)
            except NoSessionAvailable as exc:
                refused = refused or exc
                continue
            if pool_plan is not primary:
                log.debug("served by a fallback pool", pool=pool_plan.name, routed=primary.name)
                self.services.metrics.fallback_taken(primary.name, pool_plan.name)
            return held
        assert refused is not None
        if wait_s <= 0 or refused.reason in ("tried", "disabled"):
            raise refused
        return await self._lease_from(primary, wait_s)

    async def _lease_from(self, pool_plan: PoolPlan, wait_s: float) -> HeldLease:
        lease, pool = await self.services.leasing.lease(
            pool_plan.name,
            exclude=self.tried.get(pool_plan.name, ()),
            timeout_s=wait_s,
            precharge=self.plan.estimate if pool_plan.metered else 0,
        )
        return HeldLease(
            lease,
            pool,
            pool_plan,
            self.services,
            request_kind=self.kind,
            refused_by=self.refusals.first(pool_plan.name),
        )

    async def _backoff(self, attempt: int) -> None:
        settings = self.services.settings
        if not settings.backoff:
            return
        ceiling = min(settings.backoff_max_s, settings.backoff_base_s * 2 ** (attempt - 1))
        pause = random.uniform(0, ceiling)  # full jitter
        self.timing.waited_s += pause
        await asyncio.sleep(pause)

    async def _attempt(
        self, held: HeldLease, secret: str, *, final: bool
    ) -> web.StreamResponse | Failure:
        sent = await self._send(held, secret)
        if not isinstance(sent, aiohttp.ClientResponse):
            return sent
        try:
            held.answered = outcome_of(sent.status)
            answered_s = held.since_sent_s()
            self.timing.waited_s += answered_s
            self.services.metrics.upstream_answered(answered_s)
            answer = Answer(sent, held.answered, self._waits(sent))
            unreadable = first_not_utf8(sent.headers)
            if unreadable is not None:
                # The upstream did the work: another session would do it again. Refused, not
                # passed on altered.
                log.warning("upstream header not UTF-8", header=unreadable, status=sent.status)
                held.release(answer.outcome, waits=answer.waits, detail=str(sent.status))
                return header_not_utf8(502, unreadable, "the upstream answer's")
            if answer.outcome is Outcome.AUTH:
                self.refusals.refused(held.plan.name, held.lease.session_id)
                final = final or self.refusals.settled
            if answer.outcome is not Outcome.SUCCESS and not final:
                return await keep_failed(held, answer)
            return await stream_answer(held, answer, self.streaming)
        finally:
            sent.close()  # whatever ended the attempt, its upstream connection goes back or away

    async def _send(
        self, held: HeldLease, secret: str
    ) -> aiohttp.ClientResponse | web.Response | Failure:
        """The attempt sent upstream; on failure, released and what the client may get."""
        pool_plan = held.plan
        headers = self.plan.headers.copy()
        headers[pool_plan.header.name] = pool_plan.header.value(secret)
        # Only the pool's upstream: the client's path and query, never its Host or an absolute
        # URI; encoded=True keeps the path byte for byte.
        url = URL(pool_plan.upstream_url + self.plan.routed.path_qs, encoded=True)
        body = self.plan.body
        self.made += 1
        held.sending()
        try:
            return await self.services.client.request(
                self.request.method,
                url,
                headers=headers,
                data=body.payload() if body is not None else None,
                allow_redirects=False,
            )
        except BodyTooLarge:
            held.release(Outcome.SUCCESS, latency_ms=-1)
            return too_large(self.services.settings.max_body_bytes)
        except (TimeoutError, aiohttp.ClientError) as exc:
            # The HTTP client hides an error of the body it sent behind one of its own.
            failed = body.failure if body is not None else None
            if isinstance(failed, BodyTimeout):
                # The client's body stopped coming: not the session's fault.
                held.release(Outcome.UNUSED)
                client_mistake("request body timed out", session=held.lease.session_id)
                return body_timeout(self.services.settings.body_timeout_s)
            if isinstance(failed, BodyTooLarge):
                held.release(Outcome.SUCCESS, latency_ms=-1)
                return too_large(self.services.settings.max_body_bytes)
            if isinstance(exc, TimeoutError):
                held.release(Outcome.TIMEOUT, detail="connect/read timeout")
                return Failure(error_response(504, "upstream_timeout", "upstream timed out"), True)
            if self._client_gone():
                # Sending failed because the client's own body stopped coming: not the session's
                # fault, and counting it would trip a healthy session's breaker.
                held.release(Outcome.UNUSED)
                raise asyncio.CancelledError from exc
            held.release(Outcome.NETWORK, detail=type(exc).__name__)
            return Failure(
                error_response(502, "upstream_unreachable", "upstream unreachable"), True
            )
        # The client leaving before the upstream answered (asyncio.CancelledError) releases the
        # lease as unused on the way out of its block: nothing is known of the session.

    def _waits(self, upstream: aiohttp.ClientResponse) -> Waits:
        families = self.services.settings.header_families
        now_s = time.time()
        return Waits(
            retry_after_ms(upstream.headers, now_s),
            exhausted_ms(upstream.headers, now_s, families) if families else None,
            stated_rpm(upstream.headers, now_s, families) if families else None,
        )

    def _client_gone(self) -> bool:
        transport = self.request.transport
        return transport is None or transport.is_closing()
