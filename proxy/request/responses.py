"""The proxy's own answers: JSON error bodies in the OpenAI shape, ``{"error": {...}}``, that
clients of LLM APIs already know how to read. Never a traceback, never a secret."""

from __future__ import annotations

import math

from aiohttp import web


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
