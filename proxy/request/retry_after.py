"""How long an upstream asks us to wait, from its 429 response headers.

``Retry-After`` is delta-seconds or an HTTP-date in any of the three forms RFC 9110 makes
recipients accept (IMF-fixdate, RFC 850, asctime). Some OpenAI-compatible servers and Azure send
milliseconds in ``retry-after-ms`` / ``x-ms-retry-after-ms``; those are more precise and win.
A value that is negative, fractional in ``Retry-After`` (RFC 9110 allows only whole seconds) or
unparseable is not usable: the caller falls back to its default cooldown. Bounds are applied by
the broker (``RATE_LIMIT_COOLDOWN_MAX``), so a huge value is returned as it is, never overflowing.
"""

from __future__ import annotations

import email.utils
from collections.abc import Mapping
from datetime import UTC

_MS_HEADERS = ("retry-after-ms", "x-ms-retry-after-ms")


def _milliseconds(value: str) -> int | None:
    try:
        ms = float(value)
    except ValueError:
        return None
    return round(ms) if 0 <= ms < float("inf") else None


def parse_retry_after(value: str, now_s: float) -> int | None:
    """Milliseconds to wait for one ``Retry-After`` value received at ``now_s``, or None."""
    value = value.strip()
    if value.isascii() and value.isdigit():
        return int(value) * 1000
    if not value or value.lstrip("+-").replace(".", "", 1).isdigit():
        return None
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (ValueError, TypeError, IndexError):
        return None
    if when.tzinfo is None:  # asctime carries no zone; HTTP dates are always GMT
        when = when.replace(tzinfo=UTC)
    return max(0, round((when.timestamp() - now_s) * 1000))


def retry_after_ms(headers: Mapping[str, str], now_s: float) -> int | None:
    """The wait the response asks for, in milliseconds, or None when it gives no usable one."""
    for name in _MS_HEADERS:
        raw = headers.get(name)
        if raw is not None and (ms := _milliseconds(raw.strip())) is not None:
            return ms
    raw = headers.get("retry-after")
    return None if raw is None else parse_retry_after(raw, now_s)
