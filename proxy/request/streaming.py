"""Sending an upstream answer back: streamed to the client as it arrives (its usage read when
the session has a unit budget), or, for a failed attempt another may follow, kept to be replayed
if none can. The lease is renewed meanwhile by its holder (proxy.request.lease).

An answer cut off by the upstream is not passed off as a whole one: the client's connection is
dropped.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import aiohttp
import structlog
from aiohttp import web

from broker import Outcome
from proxy.request.headers import answer_headers, replay_headers
from proxy.request.lease import HeldLease, Waits
from proxy.request.usage import UsageMeter

__all__ = ["FAILED_BODY_LIMIT", "Failure", "keep_failed", "refused_units", "stream_answer"]

log = structlog.get_logger(__name__)

#: Most bytes of a failed attempt's answer kept to replay if no further attempt is possible.
FAILED_BODY_LIMIT = 64 * 1024


@dataclass(frozen=True, slots=True)
class Failure:
    """A retryable attempt that failed; replayed to the client if no other attempt can follow."""

    response: web.Response
    backoff: bool


@dataclass(frozen=True, slots=True)
class Answer:
    """An upstream's answer to one attempt, and what it means for the session."""

    upstream: aiohttp.ClientResponse
    outcome: Outcome
    waits: Waits


def refused_units(outcome: Outcome) -> int | None:
    """Units to report for an answer without usage: none when the upstream refused the request
    for its rate limit (a pre-charge is refunded), else None (a pre-charge stands)."""
    return 0 if outcome is Outcome.RATE_LIMITED else None


async def keep_failed(held: HeldLease, answer: Answer) -> Failure:
    """Release the lease with the answer's outcome and keep the answer (its body bounded)."""
    upstream, outcome, waits = answer.upstream, answer.outcome, answer.waits
    body = b""
    try:
        body = await upstream.content.read(FAILED_BODY_LIMIT)
    except (aiohttp.ClientError, TimeoutError):
        pass  # the status says enough; the body is only kept for a replay
    finally:
        upstream.close()
        held.release(
            outcome, waits=waits, detail=str(upstream.status), units=refused_units(outcome)
        )
    log.info(
        "attempt failed",
        session=held.lease.session_id,
        status=upstream.status,
        outcome=outcome.value,
        retry_after_ms=waits.retry_after_ms,
    )
    headers = replay_headers(upstream.headers)
    replay = web.Response(status=upstream.status, body=body, headers=headers)
    return Failure(replay, backoff=outcome is Outcome.SERVER)


@dataclass(frozen=True, slots=True)
class Streaming:
    """What streaming an answer needs of its request."""

    request: web.Request
    request_id: str
    usage_header: str
    headers_out: Callable[[], None]


async def stream_answer(held: HeldLease, answer: Answer, to: Streaming) -> web.StreamResponse:
    """Stream the answer to the client, then release the lease with what happened."""
    upstream, outcome = answer.upstream, answer.outcome
    whole = _whole(upstream.content)
    response = _response(upstream, whole)
    answer_headers(upstream.headers, response.headers)
    response.headers["X-Request-ID"] = to.request_id
    held.response = response
    detail = str(upstream.status)
    broken = False
    # Only a session with a unit budget needs its usage read from the answer.
    metered = held.lease.session_id in held.plan.metered
    usage = UsageMeter(upstream.headers, to.usage_header) if metered else None
    try:
        to.headers_out()
        await response.prepare(to.request)
        if whole is not None:
            if usage is not None:
                usage.feed(whole)
            await response.write_eof()
        else:
            await _copy(upstream.content, response, usage)
    except TimeoutError:
        outcome, detail, broken = Outcome.TIMEOUT, "read timeout mid-response", True
    except aiohttp.ClientPayloadError as exc:
        outcome, detail, broken = Outcome.NETWORK, type(exc).__name__, True
    except ConnectionResetError:
        log.info("client went away mid-response", session=held.lease.session_id)
    finally:
        upstream.close()
        units = usage.units() if usage is not None else refused_units(outcome)
        held.release(outcome, waits=answer.waits, detail=detail, units=units)
    if broken:
        # The client must not take a cut-off body for a whole one: drop the connection.
        log.warning("upstream broke mid-response", session=held.lease.session_id, detail=detail)
        if to.request.transport is not None:
            to.request.transport.close()
    return response


def _whole(content: aiohttp.StreamReader) -> bytes | None:
    """The whole answer's body when it came with its headers (a short one usually does), else
    None: it streams."""
    if content.is_eof() and content.exception() is None:
        return content.read_nowait()
    return None


def _response(upstream: aiohttp.ClientResponse, whole: bytes | None) -> web.StreamResponse:
    """A whole answer leaves with its headers in one write (a StreamResponse sends its headers
    on their own at ``prepare``: one more write and one more packet per request); a stream
    sends its headers at once, before its first chunk."""
    if whole is None:
        return web.StreamResponse(status=upstream.status, reason=upstream.reason)
    # The upstream's Content-Length, if any, is passed on as it is (aiohttp sets one only when
    # none is given), as are a HEAD's and a 204's (aiohttp sends no body for them).
    return web.Response(status=upstream.status, reason=upstream.reason, body=whole)


async def _copy(
    content: aiohttp.StreamReader, response: web.StreamResponse, usage: UsageMeter | None
) -> None:
    async for chunk in content.iter_any():
        await response.write(chunk)
        if usage is not None:
            usage.feed(chunk)
    await response.write_eof()
