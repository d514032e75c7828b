"""Alert notices to a webhook (ALERT_WEBHOOK_URL): JSON with a Slack-compatible ``text``.

Which alerts start and end is decided in the store, once for the fleet (``broker.alerts``); the
replica that saw a change sends its notice. Delivery runs in a background task with a bounded
queue and retries, so a slow or failing webhook never slows a request. A notice is delivered at
most once: if the replica that saw a change dies before delivering it, that notice is lost (the
next change of the same alert is sent as usual).

Notices carry session ids and counts, never a secret; the webhook URL (which often holds a
token) is never logged.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import Any

import aiohttp
import structlog

from broker.alerts import AlertChange
from proxy.telemetry.metrics import Metrics

__all__ = ["Webhook", "notice"]

log = structlog.get_logger(__name__)

#: Most notices waiting for delivery; beyond it the oldest is dropped (and logged): an alert
#: storm must not eat memory while the webhook is down.
QUEUE_MAX = 256
#: Seconds between delivery attempts of one notice (then it is given up, and logged).
RETRY_DELAYS_S = (1.0, 2.0, 4.0, 8.0, 16.0)
#: Seconds one delivery attempt may take.
DELIVERY_TIMEOUT_S = 5.0
#: Seconds queued notices get to go out when the replica stops.
CLOSE_GRACE_S = 2.0

_TITLES = {
    "breaker": (
        "circuit breaker open for session {session}",
        "breaker of session {session} closed",
    ),
    "auth": (
        "session {session} disabled: the upstream refused its credential (401/403)",
        "session {session} enabled again",
    ),
    "all_rate_limited": ("every session is rate limited ({detail})", "sessions available again"),
    "error_rate": ("fleet error rate high: {detail}", "fleet error rate back to normal"),
}


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="seconds")


def notice(pool: str, change: AlertChange, now_ms: int) -> dict[str, Any]:
    """The JSON body of the notice for ``change``."""
    firing, resolved = _TITLES.get(change.kind, (change.name, f"{change.name} resolved"))
    fields = {"session": change.session_id, "detail": change.detail}
    if change.status == "firing":
        text = (
            f":rotating_light: [{pool}] {firing.format(**fields)} (since {_iso(change.since_ms)})"
        )
    else:
        lasted = max(0, now_ms - change.since_ms) // 1000
        text = (
            f":white_check_mark: [{pool}] resolved: {resolved.format(**fields)} (after {lasted} s)"
        )
    return {
        "text": text,
        "alert": change.name,
        "kind": change.kind,
        "status": change.status,
        "pool": pool,
        "session": change.session_id,
        "since": _iso(change.since_ms),
        "detail": change.detail,
    }


class Webhook:
    """Delivers notices to one URL in the background."""

    def __init__(self, url: str, metrics: Metrics) -> None:
        self._url = url
        self._metrics = metrics
        self._queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(QUEUE_MAX)
        self._client: aiohttp.ClientSession | None = None
        self._worker: asyncio.Task[None] | None = None

    def start(self) -> None:
        timeout = aiohttp.ClientTimeout(total=DELIVERY_TIMEOUT_S)
        self._client = aiohttp.ClientSession(timeout=timeout)
        self._worker = asyncio.create_task(self._deliver_all())

    async def close(self) -> None:
        if self._worker is not None:
            try:
                await asyncio.wait_for(self._queue.join(), CLOSE_GRACE_S)
            except TimeoutError:
                log.warning("alert notices not delivered at shutdown", pending=self._queue.qsize())
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)
        if self._client is not None:
            await self._client.close()

    def send(self, body: dict[str, Any]) -> None:
        """Queue a notice; never waits."""
        if self._queue.full():
            dropped = self._queue.get_nowait()
            self._queue.task_done()
            log.warning("alert queue full; oldest notice dropped", alert=dropped["alert"])
        self._queue.put_nowait(body)

    async def _deliver_all(self) -> None:
        while True:
            body = await self._queue.get()
            try:
                await self._deliver(body)
            finally:
                self._queue.task_done()

    async def _deliver(self, body: dict[str, Any]) -> None:
        assert self._client is not None
        started = time.monotonic()
        for attempt, delay in enumerate((0.0, *RETRY_DELAYS_S)):
            await asyncio.sleep(delay)
            try:
                async with self._client.post(self._url, json=body) as response:
                    if response.status < 300:
                        self._metrics.alert_sent(body["kind"], body["status"])
                        log.info("alert sent", alert=body["alert"], status=body["status"])
                        return
                    problem = f"HTTP {response.status}"
            except (aiohttp.ClientError, TimeoutError) as exc:
                problem = type(exc).__name__
            self._metrics.webhook_failures.inc()
            log.warning(
                "alert delivery failed", alert=body["alert"], attempt=attempt + 1, error=problem
            )
        log.error(
            "alert given up",
            alert=body["alert"],
            status=body["status"],
            after_s=round(time.monotonic() - started, 1),
        )
