"""The units (tokens) a request is expected to consume, known before its answer: what a ``tpm``
budget is charged at admission and settled later to the usage the answer reports.

The rule mimics OpenAI, which counts a request's prompt plus its ``max_tokens`` against TPM when
it admits the request, and is shared by the proxy's pre-charge and the simulated upstream so both
count alike:

- ``prompt_units``: the raw body's bytes / 4, rounded up (0 for an empty body);
- ``requested_max_units``: the first of ``max_tokens``, ``max_completion_tokens``,
  ``max_output_tokens`` in a JSON object body that is a non-negative integer (a bool is not);
- the estimate is their sum, the second counting 0 when there is none (an empty body, not JSON,
  not an object, nested too deep to decode, no such field), each clamped to ``UNITS_MAX``.
"""

from __future__ import annotations

from typing import Any

import msgspec

from proxy.request.usage import UNITS_MAX

__all__ = ["BYTES_PER_UNIT", "estimate_units", "prompt_units", "requested_max_units"]

#: Bytes of a request body counted as one unit of its prompt: about one token of English text.
BYTES_PER_UNIT = 4


class _OutputLimits(msgspec.Struct):
    """The body fields that cap an answer's length; ``Any`` so a wrong type in one field is
    looked at (and passed over) alone instead of failing the others, and every other field of
    the body is skipped without being built."""

    max_tokens: Any = None
    max_completion_tokens: Any = None
    max_output_tokens: Any = None


_decoder = msgspec.json.Decoder(_OutputLimits)


def prompt_units(body: bytes) -> int:
    """The units a body counts for as a prompt: its bytes / ``BYTES_PER_UNIT``, rounded up."""
    return -(-len(body) // BYTES_PER_UNIT)


def requested_max_units(body: bytes) -> int | None:
    """The answer length a JSON object body asks for at most, or None when it does not say."""
    try:
        limits = _decoder.decode(body)
    except (ValueError, RecursionError):  # not JSON, not an object, nested too deep, 1e400
        return None
    for value in (limits.max_tokens, limits.max_completion_tokens, limits.max_output_tokens):
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return min(value, UNITS_MAX)
    return None


def estimate_units(body: bytes) -> int:
    """The units a request with this body is charged at admission: prompt plus maximum answer."""
    return min(prompt_units(body) + (requested_max_units(body) or 0), UNITS_MAX)
