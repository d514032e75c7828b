"""Usage: the units (typically tokens) an upstream answer says it consumed, reported at release so
the broker can charge a session's ``tpm`` budget.

Where the number comes from, first found wins:

1. the response header named by ``USAGE_HEADER`` (an integer), when configured;
2. a JSON answer's ``usage.total_tokens`` (else ``usage.input_tokens + usage.output_tokens``);
3. a ``text/event-stream`` answer's last event carrying such a ``usage`` object (OpenAI sends it
   in the final chunk with ``stream_options.include_usage``).

Bodies are read as they stream past, never held back: a JSON answer is kept up to
``JSON_LIMIT_BYTES`` (a larger one reports nothing), an event stream only its last
``SSE_TAIL_BYTES``. A compressed body (``Content-Encoding``) is not decoded: only the header can
report its usage.

Nothing here raises, whatever the upstream sends: a body nested too deep for the decoder, a number
out of range or bytes that are not JSON report no usage (None: a pre-charge stands), and a count
is clamped to ``UNITS_MAX``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgspec

__all__ = ["JSON_LIMIT_BYTES", "SSE_TAIL_BYTES", "UNITS_MAX", "UsageMeter", "units_of"]

#: The largest JSON answer searched for usage; a chat completion is far smaller.
JSON_LIMIT_BYTES = 1 << 20
#: How much of the end of an event stream is kept: the final events, usage among them.
SSE_TAIL_BYTES = 64 << 10
#: The most units one answer is counted for: the largest integer a Lua number (a double) holds
#: exactly, far beyond any real answer.
UNITS_MAX = 2**53 - 1


class _Usage(msgspec.Struct):
    """A ``usage`` object's counts; ``Any`` so a wrong type in one is passed over alone."""

    total_tokens: Any = None
    input_tokens: Any = None
    output_tokens: Any = None


class _Reported(msgspec.Struct):
    """An answer or event: only its ``usage`` is built, every other field skipped."""

    usage: _Usage | None = None


_decoder = msgspec.json.Decoder(_Reported)


def units_of(document: bytes | str) -> int | None:
    """The units a JSON answer or event reports in its ``usage`` object, else None (also when it
    is not JSON, nests too deep or holds numbers out of range)."""
    try:
        usage = _decoder.decode(document).usage
    except (ValueError, RecursionError):  # msgspec's errors and UnicodeEncodeError are ValueErrors
        return None
    if usage is None:
        return None
    total = _count(usage.total_tokens)
    if total is not None:
        return total
    input_tokens, output_tokens = _count(usage.input_tokens), _count(usage.output_tokens)
    if input_tokens is None or output_tokens is None:
        return None
    return min(input_tokens + output_tokens, UNITS_MAX)


def _count(value: object) -> int | None:
    """``value`` if it is a count of units (a non-negative integer, not a bool), clamped to
    UNITS_MAX; else None."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return min(value, UNITS_MAX)
    return None


def _header_units(headers: Mapping[str, str], name: str) -> int | None:
    value = headers.get(name, "").strip() if name else ""
    if not (value.isascii() and value.isdigit()):
        return None
    digits = value.lstrip("0") or "0"
    # Longer than UNITS_MAX's digits is past it (and int() refuses more than 4,300 digits).
    return UNITS_MAX if len(digits) > len(str(UNITS_MAX)) else min(int(digits), UNITS_MAX)


def _last_event_units(tail: bytes) -> int | None:
    # Events are separated by a blank line; the first one of the tail may be cut, and fails to
    # parse like any event without usage.
    text = tail.decode("utf-8", errors="replace").replace("\r\n", "\n")
    for event in reversed(text.split("\n\n")):
        data = "\n".join(
            line[5:].removeprefix(" ") for line in event.split("\n") if line.startswith("data:")
        )
        if not data or data == "[DONE]":
            continue
        units = units_of(data)
        if units is not None:
            return units
    return None


class UsageMeter:
    """Watches one answer go by and tells, at its end, the units it consumed (None: unknown)."""

    def __init__(self, headers: Mapping[str, str], header_name: str = "") -> None:
        self._from_header = _header_units(headers, header_name)
        content_type = headers.get("Content-Type", "").split(";")[0].strip().lower()
        readable = self._from_header is None and not headers.get("Content-Encoding")
        self._kind = ""
        if readable and content_type == "text/event-stream":
            self._kind = "sse"
        elif readable and (content_type == "application/json" or content_type.endswith("+json")):
            self._kind = "json"
        self._body = bytearray()
        self._overflowed = False

    def feed(self, chunk: bytes) -> None:
        """Another piece of the body, as it was passed on to the client."""
        if self._kind == "sse":
            self._body += chunk
            del self._body[:-SSE_TAIL_BYTES]
        elif self._kind == "json" and not self._overflowed:
            self._body += chunk
            if len(self._body) > JSON_LIMIT_BYTES:
                self._overflowed, self._body = True, bytearray()

    def units(self) -> int | None:
        """The units the answer reported, or None when it reported none that could be read."""
        if self._from_header is not None:
            return self._from_header
        if self._kind == "sse":
            return _last_event_units(bytes(self._body))
        if self._kind == "json" and not self._overflowed:
            return units_of(bytes(self._body))
        return None
