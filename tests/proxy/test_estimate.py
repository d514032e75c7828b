"""The units a request is estimated at before its answer: prompt bytes / 4 plus its max_tokens."""

from __future__ import annotations

import pytest

from proxy.request.estimate import estimate_units, prompt_units, requested_max_units
from proxy.request.usage import UNITS_MAX


@pytest.mark.parametrize(
    ("size", "units"),
    [
        pytest.param(0, 0, id="empty"),
        pytest.param(1, 1, id="one-byte"),
        pytest.param(4, 1, id="one-unit"),
        pytest.param(5, 2, id="rounded-up"),
        pytest.param(4000, 1000, id="large"),
    ],
)
def test_prompt_units_are_bytes_over_four_rounded_up(size: int, units: int) -> None:
    """Every started 4 bytes of the body count as a unit."""
    assert prompt_units(b"x" * size) == units


@pytest.mark.parametrize(
    ("body", "requested"),
    [
        pytest.param(b"", None, id="empty"),
        pytest.param(b"not json", None, id="not-json"),
        pytest.param(b'{"max_tokens": 5', None, id="truncated"),
        pytest.param(b'[{"max_tokens": 5}]', None, id="array"),
        pytest.param(b"7", None, id="number"),
        pytest.param(b'{"model": "m"}', None, id="no-field"),
        pytest.param(b'{"max_tokens": 0}', 0, id="zero"),
        pytest.param(b'{"max_tokens": 50}', 50, id="max_tokens"),
        pytest.param(b'{"max_completion_tokens": 60}', 60, id="max_completion_tokens"),
        pytest.param(b'{"max_output_tokens": 70}', 70, id="max_output_tokens"),
        pytest.param(b'{"max_tokens": -1}', None, id="negative"),
        pytest.param(b'{"max_tokens": 5.0}', None, id="float"),
        pytest.param(b'{"max_tokens": 1e3}', None, id="exponent"),
        pytest.param(b'{"max_tokens": true}', None, id="bool"),
        pytest.param(b'{"max_tokens": "50"}', None, id="string"),
        pytest.param(b'{"max_tokens": null}', None, id="null"),
        pytest.param(b'{"max_tokens": 10**30}', None, id="not-even-json"),
        pytest.param(b'{"max_tokens": 1000000000000000000000}', UNITS_MAX, id="huge-clamped"),
        pytest.param(
            b'{"max_output_tokens": 3, "max_completion_tokens": 2, "max_tokens": 1}',
            1,
            id="max_tokens-first",
        ),
        pytest.param(
            b'{"max_tokens": -5, "max_completion_tokens": 2, "max_output_tokens": 3}',
            2,
            id="invalid-skipped",
        ),
        pytest.param(
            b'{"max_tokens": false, "max_completion_tokens": "x", "max_output_tokens": 3}',
            3,
            id="last-valid",
        ),
        pytest.param(
            b'{"messages": [{"role": "user", "content": "hi"}], "stream": true, "max_tokens": 9}',
            9,
            id="other-fields-skipped",
        ),
    ],
)
def test_requested_max_units(body: bytes, requested: int | None) -> None:
    """The first of max_tokens, max_completion_tokens, max_output_tokens that is a non-negative
    integer (not a bool) in a JSON object, clamped to UNITS_MAX; None otherwise."""
    assert requested_max_units(body) == requested


@pytest.mark.parametrize(
    ("body", "estimate"),
    [
        pytest.param(b"", 0, id="empty"),
        pytest.param(b"not json", 2, id="not-json"),
        pytest.param(b'[{"max_tokens": 5}]', 5, id="array"),  # 19 bytes, no max
        pytest.param(b'{"max_tokens": 100}', 5 + 100, id="max_tokens"),
        pytest.param(b'{"max_tokens": -100}', 5, id="negative"),
        pytest.param(b'{"max_tokens": true}', 5, id="bool"),
        pytest.param(b'{"max_tokens": 0.5, "max_output_tokens": 7}', 11 + 7, id="float-skipped"),
    ],
)
def test_estimate_is_prompt_plus_requested_max(body: bytes, estimate: int) -> None:
    """The estimate adds the body's prompt units and the answer length it asks for, if any."""
    assert estimate_units(body) == estimate
