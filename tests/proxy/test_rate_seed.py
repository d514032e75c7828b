"""The rates the upstream's rate-limit headers state, which seed a session's learned rate."""

from __future__ import annotations

import pytest
from multidict import CIMultiDict

from proxy.request.ratelimit_headers import FAMILIES, stated_rpm

NOW = 1_700_000_000.0


@pytest.mark.parametrize(
    ("headers", "rpm"),
    [
        pytest.param({"x-ratelimit-limit-requests": "120"}, 120.0, id="openai"),
        pytest.param(
            {"x-ratelimit-limit-requests": "10000", "x-ratelimit-reset-requests": "6m0s"},
            None,
            id="openai-daily",
        ),
        pytest.param({"anthropic-ratelimit-requests-limit": "50"}, 50.0, id="anthropic"),
        pytest.param({"RateLimit-Policy": "10;w=1"}, 600.0, id="ietf-early"),
        pytest.param({"RateLimit-Policy": '"default";q=100;w=60'}, 100.0, id="ietf-structured"),
        pytest.param({"RateLimit-Policy": "100;w=60, 1000;w=3600"}, 16.0 + 2 / 3, id="strictest"),
        pytest.param(
            {"x-ratelimit-limit": "5000", "x-ratelimit-reset": str(int(NOW) + 1800)},
            5000 / 60,
            id="github-hour",
        ),
        pytest.param(
            {"x-ratelimit-limit": "60", "x-ratelimit-reset": "30"}, 60.0, id="github-minute"
        ),
        pytest.param({"x-ratelimit-limit": "5000"}, None, id="github-no-window"),
        pytest.param({"x-ratelimit-limit-requests": "0"}, None, id="zero"),
        pytest.param({"x-ratelimit-limit-requests": "1e400"}, None, id="huge"),
        pytest.param({"x-ratelimit-limit-requests": "nan"}, None, id="nan"),
        pytest.param({"RateLimit-Policy": "10;w=0"}, None, id="no-window"),
        pytest.param({"RateLimit-Policy": "garbage;;=;w"}, None, id="garbage"),
    ],
)
def test_stated_rate(headers: dict[str, str], rpm: float | None) -> None:
    """Each family's limit reads as requests a minute; what is out of range or unclear is none."""
    got = stated_rpm(CIMultiDict(headers), NOW, FAMILIES)
    assert got == (None if rpm is None else pytest.approx(rpm))


def test_only_the_families_asked_for_seed() -> None:
    """A family not in RATE_LIMIT_HEADER_FAMILIES states nothing."""
    headers = CIMultiDict({"anthropic-ratelimit-requests-limit": "50"})
    assert stated_rpm(headers, NOW, ["openai"]) is None
