"""Client authentication: with PROXY_API_KEYS set, every request must carry one of the keys, as
``Authorization: Bearer <key>`` (what OpenAI clients send) or ``X-API-Key: <key>``."""

from __future__ import annotations

import hmac

from aiohttp import web
from aiohttp.typedefs import Handler

from proxy.request.responses import error_response


def presented_key(request: web.Request) -> str:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return request.headers.get("X-API-Key", "")


def key_matches(presented: str, keys: tuple[str, ...]) -> bool:
    """Constant-time comparison against every key, so timing tells nothing about which is close.
    A key holding bytes that are not UTF-8 (the server keeps them as surrogates) is compared as
    the bytes it came as: a wrong key like any other, never an error."""
    given = presented.encode("utf-8", "surrogateescape")
    results = [hmac.compare_digest(given, key.encode()) for key in keys]
    return any(results)


def api_key_middleware(keys: tuple[str, ...]) -> web.middleware:  # type: ignore[valid-type]
    @web.middleware
    async def check(request: web.Request, handler: Handler) -> web.StreamResponse:
        if not key_matches(presented_key(request), keys):
            return error_response(401, "invalid_api_key", "a valid proxy API key is required")
        return await handler(request)

    return check
