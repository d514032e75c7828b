"""The proxy's own answers: JSON error bodies in the OpenAI shape, ``{"error": {...}}``, that
clients of LLM APIs already know how to read. Never a traceback, never a secret."""

from __future__ import annotations

import math
from collections.abc import Mapping

import structlog
from aiohttp import web

from broker import NoSessionAvailable
from broker.states import Refusal

log = structlog.get_logger(__name__)

#: How the proxy answers when no session can serve, by NoSessionAvailable.reason: status, code,
#: and for the four reasons that name what blocks the most sessions, what those sessions are.
_REFUSALS: dict[str, tuple[int, str, str]] = {
    Refusal.COOLING: (429, "all_sessions_cooling", "cooling down after a rate limit"),
    Refusal.QUOTA: (429, "all_sessions_at_quota", "at their request or unit quota for now"),
    Refusal.OPEN: (503, "all_sessions_failing", "failing (circuit breaker open)"),
    Refusal.BUSY: (503, "all_sessions_busy", "at their concurrency limit"),
}
#: The answers that need no counts: status, code, message.
_FIXED: dict[str, tuple[int, str, str]] = {
    Refusal.TRIED: (503, "no_session_left", "every available session was tried for this request"),
    Refusal.QUEUED: (
        503,
        "requests_queued",
        "older requests are waiting for a session; retry later",
    ),
    Refusal.DISABLED: (503, "no_session_enabled", "no upstream session is enabled"),
}


def error_response(
    status: int, code: str, message: str, *, retry_after_ms: int | None = None
) -> web.Response:
    """An error answer; with ``retry_after_ms``, the wait twice: ``retry-after-ms`` exact (at least
    1: the openai SDKs, which prefer it, fall back to their own backoff on 0) and ``Retry-After``
    in whole seconds rounded up (at least 1), for clients that know only the standard header."""
    kind = {
        400: "invalid_request_error",
        401: "authentication_error",
        408: "invalid_request_error",
        413: "invalid_request_error",
        429: "rate_limit_error",
    }
    body = {
        "error": {
            "message": message,
            "type": kind.get(status, "service_unavailable" if status >= 500 else "proxy_error"),
            "param": None,
            "code": code,
        }
    }
    headers = {}
    if retry_after_ms is not None:
        headers["Retry-After"] = str(max(1, math.ceil(retry_after_ms / 1000)))
        headers["retry-after-ms"] = str(max(1, retry_after_ms))
    return web.json_response(body, status=status, headers=headers)


def too_large(limit_bytes: int) -> web.Response:
    """413 for a body over MAX_BODY_BYTES."""
    return error_response(413, "request_too_large", f"request body over {limit_bytes} bytes")


def body_timeout(timeout_s: float) -> web.Response:
    """408 for a body that did not arrive within BODY_TIMEOUT. The connection is closed after
    it: what the client may still send of its body is not waited for."""
    response = error_response(
        408, "request_body_timeout", f"the request body did not arrive within {timeout_s:g} s"
    )
    response.force_close()
    return response


def header_not_utf8(status: int, name: str, whose: str) -> web.Response:
    """400 (a client's request) or 502 (an upstream's answer) for a header value holding bytes
    that are not UTF-8, which would not pass on unaltered."""
    code = "header_not_utf8" if status == 400 else "upstream_header_not_utf8"
    shown = name if len(name) <= 100 else name[:100] + "..."
    return error_response(status, code, f"{whose} header {shown} holds bytes that are not UTF-8")


def no_session(exc: NoSessionAvailable) -> web.Response:
    """429 (cooling, quota) or 503 (the rest) when no session can serve, with the wait until the
    earliest free moment (none when none is enabled) and, when the store said, how many sessions
    each blocking state holds."""
    log.debug(  # one per refused request: too many for info under overload
        "no session available",
        reason=exc.reason,
        retry_after_ms=exc.retry_after_ms,
        sessions=exc.counts,
    )
    refusal = _REFUSALS.get(exc.reason)
    if refusal is None:
        status, code, message = _FIXED.get(exc.reason, _FIXED[Refusal.DISABLED])
    else:
        status, code, what = refusal
        message = f"no upstream session can serve now: {_blocking(exc.counts, exc.reason, what)}"
        message += "; retry later"
    wait = exc.retry_after_ms if exc.reason != Refusal.DISABLED else None
    return error_response(status, code, message, retry_after_ms=wait)


def _blocking(counts: Mapping[str, int], reason: str, what: str) -> str:
    """``3 cooling down after a rate limit, 1 at their concurrency limit``, most first; without
    counts (a wait that timed out on a refusal it kept), the reason's group alone."""
    groups = sorted(
        ((n, state) for state, n in counts.items() if state in _REFUSALS and n > 0),
        key=lambda group: (-group[0], group[1] != reason),
    )
    if not groups:
        return f"most sessions {what}"
    return ", ".join(f"{n} {_REFUSALS[state][2]}" for n, state in groups)
