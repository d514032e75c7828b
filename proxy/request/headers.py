"""The header policy: what of a client's request reaches the upstream, what of the upstream's
answer reaches the client, and the request id both carry.

Never passed on: hop-by-hop headers (and those ``Connection`` names), the client's credentials
(for this proxy or nobody), the headers the sessions' secrets go in, the pool header. Never
returned: an upstream's ``Set-Cookie``, which with web-session credentials is a secret.

A header value passed on is never altered. The HTTP server and client keep bytes that are not
UTF-8 as surrogates, and would drop them on the way out, so a header to be passed on that holds
one is refused (``first_not_utf8``): a client's request gets 400, an upstream's answer 502.
"""

from __future__ import annotations

import secrets
from functools import cache

from multidict import CIMultiDict, CIMultiDictProxy

__all__ = [
    "CLIENT_CREDENTIALS",
    "HOP_BY_HOP",
    "REQUEST_ID_MAX",
    "UPSTREAM_ONLY",
    "answer_headers",
    "first_not_utf8",
    "outgoing_headers",
    "replay_headers",
    "request_id_of",
]

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
#: The longest X-Request-ID passed through; longer or unprintable ones are replaced.
REQUEST_ID_MAX = 128


def first_not_utf8(headers: CIMultiDict[str] | CIMultiDictProxy[str]) -> str | None:
    """The name of the first header whose value holds bytes that are not UTF-8, or None."""
    for name, value in headers.items():
        if not value.isascii():
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:  # a surrogate: a byte that was not UTF-8
                return name
    return None


def request_id_of(headers: CIMultiDictProxy[str]) -> str:
    given = headers.get("X-Request-ID", "")
    if 0 < len(given) <= REQUEST_ID_MAX and given.isascii() and given.isprintable():
        return given
    return secrets.token_hex(16)  # the shape of a uuid4().hex, for a fraction of its cost


def outgoing_headers(
    headers: CIMultiDictProxy[str], secret_headers: tuple[str, ...], request_id: str
) -> CIMultiDict[str]:
    """What every attempt of a request sends before its session's secret is added:
    ``secret_headers`` are the headers the secrets go in, and the pool header."""
    outgoing: CIMultiDict[str] = CIMultiDict()
    _copy_kept(headers, _dropped(_never_forwarded(secret_headers)), outgoing)
    outgoing["X-Request-ID"] = request_id
    return outgoing


def answer_headers(headers: CIMultiDictProxy[str], into: CIMultiDict[str]) -> None:
    """Add an upstream answer's headers, as the client gets them streamed, to ``into``."""
    _copy_kept(headers, _dropped(UPSTREAM_ONLY), into)


def replay_headers(headers: CIMultiDictProxy[str]) -> CIMultiDict[str]:
    """A failed attempt's headers as the client gets them if it is replayed: its body is kept
    as received (Content-Encoding kept), its length recomputed."""
    kept: CIMultiDict[str] = CIMultiDict()
    _copy_kept(headers, _dropped(_REPLAY_DROPPED), kept)
    return kept


_REPLAY_DROPPED = UPSTREAM_ONLY | {"content-length"}


@cache
def _never_forwarded(names: tuple[str, ...]) -> frozenset[str]:
    """Client headers never passed on: its credentials, and whatever it sent under ``names``:
    those the sessions' secrets go in, and the pool header (which is for this proxy)."""
    return CLIENT_CREDENTIALS | {name.lower() for name in names}


@cache
def _dropped(extra: frozenset[str]) -> frozenset[str]:
    """The headers never passed on (lower case): hop-by-hop ones and ``extra``."""
    return HOP_BY_HOP | extra


def _copy_kept(
    headers: CIMultiDictProxy[str], dropped: frozenset[str], into: CIMultiDict[str]
) -> None:
    """Add to ``into`` the headers not ``dropped``, nor named by a ``Connection`` header."""
    named = headers.getall("Connection", ())
    if named:
        dropped = dropped | {token.strip().lower() for value in named for token in value.split(",")}
    for name, value in headers.items():
        if name.lower() not in dropped:
            into.add(name, value)
