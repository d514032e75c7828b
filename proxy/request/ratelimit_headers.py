"""Learning from rate-limit response headers: a session the upstream says has nothing left cools
until the upstream's reset, before it ever answers 429.

Families (RATE_LIMIT_HEADER_FAMILIES picks which are read):

``openai``     ``x-ratelimit-remaining-requests`` / ``x-ratelimit-reset-requests`` (and -tokens),
               resets as Go durations (``1s``, ``6m0s``, ``17.28s``) from now
``anthropic``  ``anthropic-ratelimit-{requests,tokens,input-tokens,output-tokens}-remaining`` /
               ``-reset``, resets as RFC 3339 timestamps
``github``     ``x-ratelimit-remaining`` / ``x-ratelimit-reset``, reset in epoch seconds (a small
               number is taken as seconds from now, as some servers send it)
``ietf``       ``RateLimit-Remaining`` / ``RateLimit-Reset`` (delta seconds, drafts up to 06) and
               the structured ``RateLimit: "name";r=0;t=34`` (drafts 07 and later)

The same families state a rate that seeds the session's learned one before any 429
(``stated_rpm``, docs/learning.md): ``x-ratelimit-limit-requests`` and
``anthropic-ratelimit-requests-limit`` per minute, ``RateLimit-Policy`` as ``q`` per ``w``
seconds, and ``x-ratelimit-limit`` per the window its reset tells (a minute or an hour).

A remaining of -1 means unknown (Azure sends it), not exhausted. Malformed values are ignored,
never fatal: nothing here raises, whatever the upstream sends; a reset too far away to count
(``1e308``) is clamped to ``WAIT_MAX_MS``, and a value longer than any real one (a 400-digit Go
duration) is not read at all.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime

from proxy.config.settings import FAMILIES
from proxy.request.retry_after import clamped_ms

_GO_DURATION = re.compile(r"(\d+(?:\.\d+)?)(h|ms|us|µs|ns|m|s)")
#: A github-style reset below this (2001-09-09) is a delay in seconds, as some servers send it.
_EPOCH_FLOOR = 1e9
_GO_UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}


@dataclass(frozen=True, slots=True)
class Limit:
    """A limit an answer reports: what is left, seconds until it resets (None: unknown)."""

    remaining: int
    reset_s: float | None


#: The longest header value read as a number: far more digits than any real count or reset
#: (float() of a long string costs time; int() refuses more than 4,300 digits).
_NUMBER_CHARS_MAX = 64
#: A remaining count this large is as good as unlimited: longer ones are not converted.
_REMAINING_DIGITS_MAX = 18


def go_duration(value: str) -> float | None:
    """Seconds in a Go duration such as ``6m0s`` or ``17.28s``; None if it is not one, or is
    longer than any real one."""
    value = value.strip()
    # The pattern backtracks over a long run of digits with no unit: a longer value is no
    # duration any server sends, and is not searched.
    if not value or len(value) > _NUMBER_CHARS_MAX or _GO_DURATION.sub("", value):
        return None
    return sum(float(n) * _GO_UNITS[unit] for n, unit in _GO_DURATION.findall(value))


def _remaining(value: str | None) -> int | None:
    """A count of what is left: ASCII digits only (-1, Azure's "unknown", is None)."""
    digits = value.strip() if value is not None else ""
    if not (digits.isascii() and digits.isdigit()):
        return None
    digits = digits.lstrip("0") or "0"
    return int(digits) if len(digits) <= _REMAINING_DIGITS_MAX else 10**_REMAINING_DIGITS_MAX


def nonnegative_number(value: str | None) -> float | None:
    """``value`` as a finite number >= 0, or None when it is absent or not one."""
    if value is None or len(value) > _NUMBER_CHARS_MAX:
        return None
    try:
        number = float(value)
    except ValueError:  # UnicodeEncodeError (a byte that was not UTF-8) is one
        return None
    return number if 0 <= number < math.inf else None


def _rfc3339(value: str | None, now_s: float) -> float | None:
    try:
        when = datetime.fromisoformat(value) if value else None
        if when is None or when.tzinfo is None:
            return None
        return max(0.0, when.timestamp() - now_s)
    except (ValueError, OverflowError):
        return None


def _openai(headers: Mapping[str, str], now_s: float) -> Iterator[Limit]:
    for resource in ("requests", "tokens"):
        remaining = _remaining(headers.get(f"x-ratelimit-remaining-{resource}"))
        if remaining is not None:
            reset = go_duration(headers.get(f"x-ratelimit-reset-{resource}", ""))
            yield Limit(remaining, reset)


def _anthropic(headers: Mapping[str, str], now_s: float) -> Iterator[Limit]:
    for resource in ("requests", "tokens", "input-tokens", "output-tokens"):
        prefix = f"anthropic-ratelimit-{resource}"
        remaining = _remaining(headers.get(f"{prefix}-remaining"))
        if remaining is not None:
            yield Limit(remaining, _rfc3339(headers.get(f"{prefix}-reset"), now_s))


def _github(headers: Mapping[str, str], now_s: float) -> Iterator[Limit]:
    remaining = _remaining(headers.get("x-ratelimit-remaining"))
    if remaining is not None:
        reset = nonnegative_number(headers.get("x-ratelimit-reset"))
        if reset is not None and reset >= _EPOCH_FLOOR:
            reset = max(0.0, reset - now_s)
        yield Limit(remaining, reset)


def _structured(value: str) -> Iterator[Limit]:
    for item in value.split(","):
        params = dict(
            part.strip().partition("=")[::2] for part in item.split(";")[1:] if "=" in part
        )
        remaining = _remaining(params.get("r"))
        if remaining is not None:
            yield Limit(remaining, nonnegative_number(params.get("t")))


def _ietf(headers: Mapping[str, str], now_s: float) -> Iterator[Limit]:
    remaining = _remaining(headers.get("ratelimit-remaining"))
    if remaining is not None:
        yield Limit(remaining, nonnegative_number(headers.get("ratelimit-reset")))
    if "ratelimit" in headers:
        yield from _structured(headers["ratelimit"])


_READERS: dict[str, Callable[[Mapping[str, str], float], Iterator[Limit]]] = {
    "openai": _openai,
    "anthropic": _anthropic,
    "github": _github,
    "ietf": _ietf,
}
# The settings accept exactly the families there is a reader for.
assert _READERS.keys() == set(FAMILIES)


#: What the name of every header of every family holds (lower case): an answer with no such
#: header, as most are, is not searched family by family.
_FAMILY_MARK = "ratelimit"


def _mentions_limits(headers: Mapping[str, str]) -> bool:
    return any(_FAMILY_MARK in name.lower() for name in headers)


def limits(headers: Mapping[str, str], now_s: float, families: Collection[str]) -> list[Limit]:
    """Every limit the answer reports, from the families asked for. Keys must be case-insensitive
    (aiohttp's headers are)."""
    if not _mentions_limits(headers):
        return []
    return [limit for family in families for limit in _READERS[family](headers, now_s)]


def exhausted_ms(headers: Mapping[str, str], now_s: float, families: Collection[str]) -> int | None:
    """Milliseconds until the session may be used again when some limit has nothing left and says
    when it resets (the latest such reset); None when nothing is exhausted or no reset is known."""
    resets = [
        limit.reset_s
        for limit in limits(headers, now_s, families)
        if limit.remaining == 0 and limit.reset_s is not None
    ]
    # An infinite reset (an overflowing duration) is the longest wait there is, not unusable.
    return (clamped_ms(max(resets)) or 0) if resets else None


#: What a stated limit may be to seed a rate: a count of requests in [1, 1,000,000] per a window
#: in [1 s, 1 day]. Anything else (0, a negative, 1e400, a policy of 10 per 0 s) seeds nothing.
_SEED_COUNT = (1.0, 1_000_000.0)
_SEED_WINDOW_S = (1.0, 86_400.0)
#: Per-minute families: a reset further away than this is a daily limit, not a pace.
_MINUTE_S = 60.0
_HOUR_S = 3600.0


def _rate(count: float | None, window_s: float | None) -> float | None:
    """``count`` per ``window_s`` as requests a minute, when both are in the seed range."""
    if count is None or window_s is None:
        return None
    if not (_SEED_COUNT[0] <= count <= _SEED_COUNT[1]):
        return None
    if not (_SEED_WINDOW_S[0] <= window_s <= _SEED_WINDOW_S[1]):
        return None
    return count * _MINUTE_S / window_s


def _openai_rate(headers: Mapping[str, str], now_s: float) -> float | None:
    reset = go_duration(headers.get("x-ratelimit-reset-requests", ""))
    if reset is not None and reset > _MINUTE_S:
        return None  # a daily limit: its reset is hours away, it says nothing of the pace
    return _rate(nonnegative_number(headers.get("x-ratelimit-limit-requests")), _MINUTE_S)


def _anthropic_rate(headers: Mapping[str, str], now_s: float) -> float | None:
    return _rate(nonnegative_number(headers.get("anthropic-ratelimit-requests-limit")), _MINUTE_S)


def _github_rate(headers: Mapping[str, str], now_s: float) -> float | None:
    # The window is not stated: the reset tells a minute's limit from an hour's (GitHub's).
    reset = nonnegative_number(headers.get("x-ratelimit-reset"))
    if reset is None:
        return None
    if reset >= _EPOCH_FLOOR:
        reset -= now_s
    window = _MINUTE_S if reset <= _MINUTE_S else _HOUR_S if reset <= _HOUR_S else None
    return _rate(nonnegative_number(headers.get("x-ratelimit-limit")), window)


def _policy_rate(headers: Mapping[str, str], now_s: float) -> float | None:
    """The strictest of ``RateLimit-Policy``'s items: ``10;w=1`` (drafts up to 06) or
    ``"default";q=100;w=60`` (07 and later)."""
    value = headers.get("ratelimit-policy")
    if value is None or len(value) > _POLICY_CHARS_MAX:
        return None
    rates = []
    for item in value.split(","):
        first, *parts = (part.strip() for part in item.split(";"))
        params = dict(part.partition("=")[::2] for part in parts if "=" in part)
        count = params.get("q", first)
        rate = _rate(nonnegative_number(count), nonnegative_number(params.get("w")))
        if rate is not None:
            rates.append(rate)
    return min(rates, default=None)


#: The longest RateLimit-Policy read: real ones hold a few items.
_POLICY_CHARS_MAX = 1024

_RATE_READERS: dict[str, Callable[[Mapping[str, str], float], float | None]] = {
    "openai": _openai_rate,
    "anthropic": _anthropic_rate,
    "github": _github_rate,
    "ietf": _policy_rate,
}
assert _RATE_READERS.keys() == set(FAMILIES)


def stated_rpm(headers: Mapping[str, str], now_s: float, families: Collection[str]) -> float | None:
    """The request rate (requests a minute) the answer's headers state, the strictest of the
    families asked for; None when none states one usable. Never raises."""
    if not _mentions_limits(headers):
        return None
    read = (_RATE_READERS[family](headers, now_s) for family in families)
    rates = [rate for rate in read if rate is not None]
    return min(rates, default=None)
