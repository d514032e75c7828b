"""Quiet logs: what a client can cause -- malformed HTTP, hanging up mid-body -- is one WARNING
line without a traceback, and at most a budget of such lines per window, even at LOG_LEVEL=info."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections import Counter
from typing import TYPE_CHECKING, Any

import structlog

from proxy.telemetry.logs import LogBudget, configure_logging

from .test_hostile_input import raw_exchange, status_of

if TYPE_CHECKING:
    from tests.proxy.conftest import StartReplica

ADMIN_TOKEN = "admin-token-0123456789"
MALFORMED = [
    b"GET / HTTP/1.1\r\nHost: x\r\nNo colon here\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
    b"GET / HTTP/9.9\r\nHost: x\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nX-Long: " + b"a" * 20_000 + b"\r\n\r\n",
]


def test_a_budget_admits_a_few_lines_per_window_and_counts_the_rest() -> None:
    """PER_WINDOW lines of a kind per window; the first one of the next window tells how many
    were left out; kinds have budgets of their own."""
    now = [0.0]
    budget = LogBudget(per_window=3, window_s=10.0, clock=lambda: now[0])
    assert [budget.take("a") for _ in range(5)] == [0, 0, 0, None, None]
    assert budget.take("b") == 0
    now[0] = 10.0
    assert budget.take("a") == 2
    assert budget.take("a") == 0


def _lines(out: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.getvalue().splitlines() if line.strip()]


async def test_protocol_errors_are_few_warnings_without_traceback(
    start_replica: StartReplica,
) -> None:
    """Many malformed requests to the proxy and admin clients hanging up mid-body, at
    LOG_LEVEL=info: WARNING lines only, none with a traceback, at most the budget per kind."""
    out = io.StringIO()
    configure_logging("info", "json", stream=out, cache=False)
    try:
        replica = await start_replica(admin_token=ADMIN_TOKEN)
        for _ in range(10):
            for request in MALFORMED:
                answer = await raw_exchange(replica.proxy_url, request)
                assert status_of(answer) in (400, 431), answer[:100]
        port = int(replica.ops_url.rsplit(":", 1)[1])
        for _ in range(20):
            _reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(
                b"PUT /admin/sessions/a/weight HTTP/1.1\r\nHost: x\r\n"
                b"Authorization: Bearer " + ADMIN_TOKEN.encode() + b"\r\n"
                b'Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{"wei'
            )
            await writer.drain()
            await asyncio.sleep(0.05)
            writer.transport.abort()
        await asyncio.sleep(0.2)
    finally:
        structlog.reset_defaults()
        logging.getLogger().handlers.clear()
    lines = _lines(out)
    assert "Traceback" not in out.getvalue()
    assert not [line for line in lines if line["level"] in ("error", "critical")], lines
    warned = [line for line in lines if line["level"] == "warning"]
    protocol = [line for line in warned if "protocol error" in line["event"]]
    assert protocol, warned
    kinds = Counter(line["event"].split(":")[1] for line in protocol)
    assert max(kinds.values()) <= LogBudget.PER_WINDOW
