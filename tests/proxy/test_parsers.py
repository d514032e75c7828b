"""Property tests of every parser of untrusted input: whatever bytes or text it is fed, it
returns a value in range or "unusable" (None), and never raises."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict

from proxy.request.auth import key_matches
from proxy.request.estimate import estimate_units, requested_max_units
from proxy.request.ratelimit_headers import (
    FAMILIES,
    exhausted_ms,
    go_duration,
    limits,
    stated_rpm,
)
from proxy.request.retry_after import WAIT_MAX_MS, parse_retry_after, retry_after_ms
from proxy.request.routing import requested_model
from proxy.request.usage import UNITS_MAX, UsageMeter, units_of

NOW = 1_700_000_000.0
#: These assert behaviour, not speed, on a shared machine: no per-example deadline.
many = settings(deadline=None, max_examples=200)
#: Header values as the HTTP server hands them over: any text, bytes that were not UTF-8 kept as
#: surrogates (\udc80-\udcff).
header_values = st.one_of(
    st.text(),
    st.binary().map(lambda raw: raw.decode("utf-8", "surrogateescape")),
    st.integers().map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.builds(lambda digits: "9" * digits, st.integers(0, 6000)),
    st.builds(
        lambda digits, unit: "9" * digits + unit,
        st.integers(1, 500),
        st.sampled_from(["h", "m", "s", "ms", "us", "ns"]),
    ),
)
RATE_LIMIT_HEADERS = [
    "retry-after",
    "retry-after-ms",
    "x-ms-retry-after-ms",
    "x-ratelimit-remaining-requests",
    "x-ratelimit-reset-requests",
    "x-ratelimit-remaining-tokens",
    "x-ratelimit-reset-tokens",
    "anthropic-ratelimit-requests-remaining",
    "anthropic-ratelimit-requests-reset",
    "x-ratelimit-remaining",
    "x-ratelimit-reset",
    "ratelimit-remaining",
    "ratelimit-reset",
    "ratelimit",
    "x-ratelimit-limit-requests",
    "anthropic-ratelimit-requests-limit",
    "x-ratelimit-limit",
    "ratelimit-policy",
]
header_sets = st.dictionaries(st.sampled_from(RATE_LIMIT_HEADERS), header_values)
#: JSON-ish bodies: arbitrary bytes, and documents nested past any decoder's depth limit.
bodies = st.one_of(
    st.binary(max_size=2000),
    st.builds(
        lambda depth, opener, key: (
            b'{"' + key + b'": ' + opener * depth + (b"]" if opener == b"[" else b"") * depth + b"}"
        ),
        st.integers(0, 6000),
        st.sampled_from([b"[", b'{"a":']),
        st.sampled_from([b"usage", b"model", b"max_tokens", b"x"]),
    ),
    st.sampled_from(
        [
            b'{"usage": {"total_tokens": 1e400}}',
            b'{"max_tokens": ' + b"9" * 5000 + b"}",
            b'{"usage": {"total_tokens": ' + b"9" * 5000 + b"}}",
            b'{"model": 1e400, "max_tokens": -1e400}',
        ]
    ),
)


@many
@given(header_values)
def test_retry_after_is_a_clamped_wait_or_none(value: str) -> None:
    """Any Retry-After value: a wait in [0, WAIT_MAX_MS], or None."""
    got = parse_retry_after(value, NOW)
    assert got is None or 0 <= got <= WAIT_MAX_MS


@many
@given(header_sets)
def test_rate_limit_headers_never_raise(headers: dict[str, str]) -> None:
    """Any mix of every family's headers: waits in [0, WAIT_MAX_MS] or None, limits read or
    passed over."""
    multi = CIMultiDict(headers)
    wait = retry_after_ms(multi, NOW)
    assert wait is None or 0 <= wait <= WAIT_MAX_MS
    exhausted = exhausted_ms(multi, NOW, FAMILIES)
    assert exhausted is None or 0 <= exhausted <= WAIT_MAX_MS
    assert all(limit.remaining >= 0 for limit in limits(multi, NOW, FAMILIES))


@many
@given(header_sets)
def test_stated_rates_are_in_range_or_none(headers: dict[str, str]) -> None:
    """Any mix of rate-limit headers seeds a rate of 1 to 1,000,000 requests per 1 s to 1 day
    (as requests a minute), or nothing: garbage never seeds."""
    got = stated_rpm(CIMultiDict(headers), NOW, FAMILIES)
    assert got is None or 1_000_000 * 60 >= got >= 60 / 86_400


@many
@given(header_values)
def test_go_duration_never_raises(value: str) -> None:
    """Any text: seconds (possibly infinite: callers clamp), or None."""
    got = go_duration(value)
    assert got is None or got >= 0


@many
@given(bodies, st.sampled_from(["application/json", "text/event-stream"]))
def test_usage_is_a_clamped_count_or_none(body: bytes, content_type: str) -> None:
    """Any answer body, JSON or event stream: units in [0, UNITS_MAX], or None."""
    meter = UsageMeter({"Content-Type": content_type})
    meter.feed(body if content_type == "application/json" else b"data: " + body + b"\n\n")
    got = meter.units()
    assert got is None or 0 <= got <= UNITS_MAX
    direct = units_of(body)
    assert direct is None or 0 <= direct <= UNITS_MAX


@many
@given(header_values)
def test_usage_header_is_a_clamped_count_or_none(value: str) -> None:
    """Any USAGE_HEADER value: units in [0, UNITS_MAX], or None."""
    got = UsageMeter({"X-Units": value}, "X-Units").units()
    assert got is None or 0 <= got <= UNITS_MAX


@many
@given(bodies)
def test_request_body_parsers_never_raise(body: bytes) -> None:
    """Any request body: a model name or None for routing; an estimate in [0, UNITS_MAX]."""
    model = requested_model(body)
    assert model is None or isinstance(model, str)
    requested = requested_max_units(body)
    assert requested is None or 0 <= requested <= UNITS_MAX
    assert 0 <= estimate_units(body) <= UNITS_MAX


@many
@given(header_values)
def test_any_presented_key_is_compared_not_raised_on(presented: str) -> None:
    """Any credential a client presents, UTF-8 or not: it matches or not."""
    assert key_matches(presented, ("right-key-1",)) is (presented == "right-key-1")
