"""Outcome judgement: what an upstream status says about the credential that got it.

One place decides it. A 429 is a rate limit, 5xx a failing upstream (the circuit breaker counts
it), other 4xx the client's own fault. A 401/403 is evidence against the credential only when the
credential, not the request, earned it; the store weighs that evidence (lua/release.lua, the rule
in docs/how-it-works.md) from two facts this module gives each release: the request's kind, and
the session that refused this same request before. The forwarder stops retrying a request that
two sessions refused: a 403 every credential gets on one path is that path's answer.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache

from broker import Outcome

__all__ = ["AUTH_REFUSALS_MAX", "AuthRefusals", "outcome_of", "request_kind"]

#: 401/403 answers from distinct sessions after which a request is answered as it is.
AUTH_REFUSALS_MAX = 2
#: Path segments a request kind keeps: ``/v1/chat/completions`` and ``/v1/chat/other`` are one
#: kind, ids further down the path do not split it.
_KIND_SEGMENTS = 2
#: Paths whose kind is remembered: a proxy's clients use a handful of paths, and the hash of
#: each would otherwise be computed for every request.
_KIND_CACHE = 1024


def outcome_of(status: int) -> Outcome:
    """What an upstream status says about the session (other 4xx are the client's own fault)."""
    if status == 429:
        return Outcome.RATE_LIMITED
    if status in (401, 403):
        return Outcome.AUTH
    if status >= 500:
        return Outcome.SERVER
    return Outcome.SUCCESS


def request_kind(method: str, path: str) -> str:
    """The request's kind: a short hash of its method and its path's first two segments (the
    path itself never reaches the store)."""
    return _kind(method, path.split("?", 1)[0])


@lru_cache(maxsize=_KIND_CACHE)
def _kind(method: str, path: str) -> str:
    segments = [s for s in path.split("/") if s][:_KIND_SEGMENTS]
    text = f"{method.upper()} /{'/'.join(segments)}"
    return hashlib.blake2b(text.encode("utf-8", "surrogateescape"), digest_size=8).hexdigest()


class AuthRefusals:
    """The 401/403 answers one request got: per pool, the first session that refused it."""

    __slots__ = ("_first", "count")

    def __init__(self) -> None:
        self._first: dict[str, str] = {}
        self.count = 0

    def first(self, pool: str) -> str:
        """The session of ``pool`` that refused this request first ('' none): its release
        names it, so the store can tell the request's fault from the credential's."""
        return self._first.get(pool, "")

    def refused(self, pool: str, session_id: str) -> None:
        self._first.setdefault(pool, session_id)
        self.count += 1

    @property
    def settled(self) -> bool:
        """Whether this request's 401/403 is its answer: another session would refuse it too."""
        return self.count >= AUTH_REFUSALS_MAX
