"""Whether a replica takes new requests, and how many are in flight: a draining replica answers
new ones 503 at once and gives those in flight SHUTDOWN_GRACE to finish."""

from __future__ import annotations

import asyncio

__all__ = ["Admission"]


class Admission:
    """Draining, and the requests in flight."""

    def __init__(self) -> None:
        self.draining = False
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    def tracking(self) -> _InFlight:
        """Count a request in flight for the duration of an ``async with`` block."""
        return _InFlight(self)

    def _begin(self) -> None:
        self._in_flight += 1
        self._idle.clear()

    def _end(self) -> None:
        self._in_flight -= 1
        if self._in_flight == 0:
            self._idle.set()

    async def wait_idle(self, timeout_s: float) -> bool:
        """Wait until no request is in flight; False when ``timeout_s`` passed first."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
        except TimeoutError:
            return False
        return True


class _InFlight:
    """``Admission.tracking``'s block: a class, not a generator (it is entered for every
    request)."""

    __slots__ = ("_admission",)

    def __init__(self, admission: Admission) -> None:
        self._admission = admission

    async def __aenter__(self) -> None:
        self._admission._begin()

    async def __aexit__(self, *exc_info: object) -> None:
        self._admission._end()
