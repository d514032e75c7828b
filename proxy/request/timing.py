"""Where a request's time went: waiting (for the upstream, in a backoff) versus the proxy's own
work, which is its overhead (a metric)."""

from __future__ import annotations

import time

__all__ = ["Timing"]


class Timing:
    """One request's clock, started when it arrives."""

    __slots__ = ("overhead_s", "started", "waited_s")

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.waited_s = 0.0
        self.overhead_s: float | None = None

    def headers_out(self) -> None:
        """The answer's headers leave now: what the proxy itself took so far is its overhead."""
        if self.overhead_s is None:
            self.overhead_s = time.monotonic() - self.started - self.waited_s
