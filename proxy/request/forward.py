"""Forwarding: the proxy's one route. For each client request: its id, its body (bounded by
MAX_BODY_BYTES and BODY_TIMEOUT), its pool (proxy.request.routing), the units it pre-charges a
metered session, then its attempts (proxy.request.attempts), each on a lease of its own.
"""

from __future__ import annotations

import asyncio
import time

import structlog
from aiohttp import web

from proxy.config.pools import PoolTable
from proxy.request.attempts import Attempts, Plan
from proxy.request.body import BodyTimeout, BodyTooLarge, ReplayableBody
from proxy.request.estimate import estimate_units
from proxy.request.headers import first_not_utf8, outgoing_headers, request_id_of
from proxy.request.ratelimit_headers import nonnegative_number
from proxy.request.responses import body_timeout, error_response, header_not_utf8, too_large
from proxy.request.routing import NoRoute, Routed, route_request
from proxy.request.services import Admission, Services
from proxy.request.streaming import Streaming
from proxy.request.timing import Timing
from proxy.telemetry.logs import client_mistake

__all__ = ["ProxyRoute"]


class ProxyRoute:
    """The proxy app's only route: every method, every path. Given its services once the
    replica has started (``serve``)."""

    def __init__(self, admission: Admission) -> None:
        self._admission = admission
        self._services: Services | None = None

    def serve(self, services: Services) -> None:
        self._services = services

    async def handle(self, request: web.Request) -> web.StreamResponse:
        services = self._services
        assert services is not None, "the replica has not started"
        request_id = request_id_of(request.headers)
        structlog.contextvars.bind_contextvars(request_id=request_id)
        try:
            if self._admission.draining:
                response: web.StreamResponse = error_response(
                    503, "shutting_down", "this replica is shutting down; retry on another"
                )
            else:
                async with self._admission.tracking():
                    timing = Timing()
                    response, attempts = await forward(services, request, request_id, timing)
                    if not response.prepared:
                        timing.headers_out()
                    services.metrics.request_done(response.status, attempts, timing.overhead_s)
            if not response.prepared:
                response.headers["X-Request-ID"] = request_id
                if response.keep_alive is False:
                    await _send_and_close(request, response)
            return response
        finally:
            structlog.contextvars.unbind_contextvars("request_id")


async def forward(
    services: Services, request: web.Request, request_id: str, timing: Timing
) -> tuple[web.StreamResponse, int]:
    """One client request's answer, and the upstream attempts it took."""
    settings = services.settings
    table = services.pools.table  # one request keeps the pools it started with
    limit = settings.max_body_bytes
    body = None
    if request.body_exists:
        deadline = asyncio.get_running_loop().time() + settings.body_timeout_s
        body = ReplayableBody(request.content, limit, deadline)
    wait_until = time.monotonic() + _wait_s(request, settings.queue_timeout_s)
    if (request.content_length or 0) > limit:
        return too_large(limit), 0
    try:
        if body is not None and request.content_length is None:
            await body.read_all()
        routed = await route_request(table, request.headers, request.rel_url.raw_path_qs, body)
        plan = await _plan(services, table, request, request_id, routed, body, wait_until)
    except BodyTooLarge:
        return too_large(limit), 0
    except BodyTimeout:
        client_mistake("request body timed out", before="lease")
        return body_timeout(settings.body_timeout_s), 0
    except NoRoute as exc:
        return error_response(404, exc.code, exc.message), 0
    unreadable = first_not_utf8(plan.headers)
    if unreadable is not None:
        client_mistake("request header not UTF-8", header=unreadable)
        return header_not_utf8(400, unreadable, "the request's"), 0
    streaming = Streaming(request, request_id, settings.usage_header, timing.headers_out)
    attempts = Attempts(services, request, plan, timing=timing, streaming=streaming)
    return await attempts.run(), attempts.made


async def _send_and_close(request: web.Request, response: web.StreamResponse) -> None:
    """Send an answer that ends its connection (a 408), then close it at once: the server would
    otherwise linger, reading what the client may still send of a body nobody wants."""
    await response.prepare(request)
    await response.write_eof()
    if request.transport is not None:
        request.transport.close()


def _wait_s(request: web.Request, queue_timeout_s: float) -> float:
    """How long the request may wait for a session: QUEUE_TIMEOUT, or less if it asks."""
    asked = nonnegative_number(request.headers.get("X-Request-Timeout"))
    return queue_timeout_s if asked is None else min(queue_timeout_s, asked)


async def _plan(
    services: Services,
    table: PoolTable,
    request: web.Request,
    request_id: str,
    routed: Routed,
    body: ReplayableBody | None,
    wait_until: float,
) -> Plan:
    """What every attempt sends; raises BodyTooLarge while reading a body to estimate."""
    chain = table.chain(routed.plan.name)
    names = tuple(plan.header.name for plan in chain)
    if table.header is not None:
        names += (table.header,)
    headers = outgoing_headers(request.headers, names, request_id)
    estimate = 0
    if services.settings.precharge_estimate and any(p.metered for p in chain):
        estimate = estimate_units(await body.read_bytes()) if body is not None else 0
    return Plan(routed, chain, headers, body, estimate, wait_until)
