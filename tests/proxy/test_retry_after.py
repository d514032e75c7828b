"""Retry-After parsing against the vectors of real upstreams (tests/data)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from proxy.request.retry_after import WAIT_MAX_MS, parse_retry_after, retry_after_ms

VECTORS = json.loads(
    (Path(__file__).parent.parent / "data" / "rate-limit-headers.json").read_text()
)
NOW = VECTORS["now"]


@pytest.mark.parametrize("case", VECTORS["retry_after"], ids=lambda c: c["form"][:40])
def test_retry_after_forms(case: dict[str, object]) -> None:
    """Every Retry-After form real upstreams send gives the expected wait, or None if unusable."""
    got = parse_retry_after(str(case["value"]), NOW)
    if case["seconds"] is None:
        assert got is None
    elif case["seconds"] == "huge":
        assert got == WAIT_MAX_MS  # clamped
    else:
        assert got == int(case["seconds"]) * 1000  # type: ignore[call-overload]


@pytest.mark.parametrize("case", VECTORS["retry_after_ms"], ids=lambda c: c["header"])
def test_millisecond_headers_win(case: dict[str, object]) -> None:
    """retry-after-ms and x-ms-retry-after-ms are read in milliseconds and win over Retry-After."""
    headers = {str(case["header"]): str(case["value"]), "retry-after": "120"}
    assert retry_after_ms(headers, NOW) == round(float(case["seconds"]) * 1000)  # type: ignore[arg-type]


def test_no_header_is_none() -> None:
    """No Retry-After at all: None, so the caller uses its default cooldown."""
    assert retry_after_ms({}, NOW) is None


def test_unicode_digits_are_not_seconds() -> None:
    """Only ASCII digits count as delta-seconds."""
    assert parse_retry_after("\u00b2", NOW) is None
