"""The proxy's own answers: JSON error bodies in the OpenAI shape, ``{"error": {...}}``, that
clients of LLM APIs already know how to read. Never a traceback, never a secret."""

from __future__ import annotations

import math

from aiohttp import web


def error_response(
    status: int, code: str, message: str, *, retry_after_ms: int | None = None
) -> web.Response:
    """An error answer; with ``retry_after_ms``, a ``Retry-After`` in whole seconds (at least 1)."""
    kind = {401: "authentication_error", 413: "invalid_request_error", 429: "rate_limit_error"}
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
    return web.json_response(body, status=status, headers=headers)


def too_large(limit_bytes: int) -> web.Response:
    """413 for a body over MAX_BODY_BYTES."""
    return error_response(413, "request_too_large", f"request body over {limit_bytes} bytes")
