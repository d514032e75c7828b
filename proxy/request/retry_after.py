"""How long an upstream asks us to wait, from its 429 response headers.

``Retry-After`` is delta-seconds or an HTTP-date in any of the three forms RFC 9110 makes
recipients accept (IMF-fixdate, RFC 850, asctime). Some OpenAI-compatible servers and Azure send
milliseconds in ``retry-after-ms`` / ``x-ms-retry-after-ms``; those are more precise and win.
A value that is negative, fractional in ``Retry-After`` (RFC 9110 allows only whole seconds) or
unparseable is not usable: the caller falls back to its default cooldown. Nothing here raises,
whatever the upstream sends: a huge wait (``1e308``, 5,000 digits) is clamped to ``WAIT_MAX_MS``,
which the broker cuts further to ``RATE_LIMIT_COOLDOWN_MAX``.
"""

from __future__ import annotations

import email.utils
import math
from collections.abc import Mapping
from datetime import UTC

__all__ = ["WAIT_MAX_MS", "clamped_ms", "parse_retry_after", "retry_after_ms"]

#: The longest wait any header is read as: the largest RATE_LIMIT_COOLDOWN_MAX accepts (a week),
#: so clamping here never changes a cooldown, and every wait fits an integer Lua holds exactly.
WAIT_MAX_MS = 7 * 86_400_000
#: Digits beyond which a whole number of seconds is past WAIT_MAX_MS anyway: longer ones are never
#: converted (Python refuses int() of more than 4,300 digits).
_SECONDS_DIGITS_MAX = len(str(WAIT_MAX_MS // 1000)) + 1
_MS_HEADERS = ("retry-after-ms", "x-ms-retry-after-ms")


def clamped_ms(seconds: float) -> int | None:
    """``seconds`` as whole milliseconds in [0, WAIT_MAX_MS]; None when it is not a number
    (NaN) or is negative."""
    if math.isnan(seconds) or seconds < 0:
        return None
    return round(min(seconds * 1000, WAIT_MAX_MS))


def _milliseconds(value: str) -> int | None:
    try:
        ms = float(value)
    except ValueError:  # UnicodeEncodeError (a byte that was not UTF-8) is one
        return None
    return None if not 0 <= ms < math.inf else clamped_ms(ms / 1000)


def _whole_seconds_ms(digits: str) -> int:
    digits = digits.lstrip("0") or "0"
    if len(digits) > _SECONDS_DIGITS_MAX:
        return WAIT_MAX_MS
    return min(int(digits) * 1000, WAIT_MAX_MS)


def parse_retry_after(value: str, now_s: float) -> int | None:
    """Milliseconds to wait for one ``Retry-After`` value received at ``now_s``, or None."""
    value = value.strip()
    if value.isascii() and value.isdigit():
        return _whole_seconds_ms(value)
    if not value or value.lstrip("+-").replace(".", "", 1).isdigit():
        return None
    try:
        when = email.utils.parsedate_to_datetime(value)
        if when.tzinfo is None:  # asctime carries no zone; HTTP dates are always GMT
            when = when.replace(tzinfo=UTC)
        wait_s = when.timestamp() - now_s
    except (ValueError, TypeError, IndexError, OverflowError):
        return None
    return clamped_ms(max(0.0, wait_s))


def retry_after_ms(headers: Mapping[str, str], now_s: float) -> int | None:
    """The wait the response asks for, in milliseconds, or None when it gives no usable one."""
    for name in _MS_HEADERS:
        raw = headers.get(name)
        if raw is not None and (ms := _milliseconds(raw.strip())) is not None:
            return ms
    raw = headers.get("retry-after")
    return None if raw is None else parse_retry_after(raw, now_s)
