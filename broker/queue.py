"""Waiting for a session instead of failing: a bounded, fair wait queue per replica.

When nothing is eligible a request may wait, up to its deadline, for the earliest moment a session
becomes free. Within a replica waiters are served first come, first served: only the oldest (the
head) talks to the store. Across the fleet, each replica's head holds a ticket in the store, ordered
by the store's clock at its first refusal; while tickets wait, only the oldest may lease, so an
older waiter anywhere is not starved by newer ones, and a freed session goes to one waiter, not to
a stampede. The scripts publish on the pool's wake channel when a session becomes available (or the
queue moves); a head sleeps until such a wake, or until the earliest known moment (a cooldown or
quota ending, a breaker half-opening, a lease expiring), or at most FALLBACK_WAIT_S, so a missed
wake never strands it.

Limits: the fleet-wide order is among each replica's oldest waiter; a replica's later waiters get
their ticket, and with it their place in the fleet's order, when they reach its head. A ticket
whose replica died lapses after TICKET_TTL_MS. A head whose request excludes the freed session
(it failed there before) holds the line until it gives up or another session frees.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Collection
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from typing import Protocol

import structlog
from redis.exceptions import RedisError

from broker.constants import FALLBACK_WAIT_S, TICKET_TTL_MS
from broker.errors import NoSessionAvailable, QueueFull, StoreError
from broker.leases import Lease, Ticket
from broker.shards import AnyPool
from broker.states import Refusal

log = structlog.get_logger(__name__)

#: Longest single read of the wake channel (seconds).
LISTEN_SLICE_S = 0.5
#: How long closing waits for the wake-up listener and its connection.
CLOSE_TIMEOUT_S = 1.0

#: The shortest sleep of a head told 'queued' (an older waiter elsewhere has the next session):
#: the earliest moment may be now, and the older waiter needs a moment to take it.
QUEUED_PAUSE_S = 0.01

#: Reasons worth waiting for: something frees up by itself.
WAITABLE = frozenset({Refusal.COOLING, Refusal.QUOTA, Refusal.OPEN, Refusal.BUSY, Refusal.QUEUED})


class QueueObserver(Protocol):
    """Told when a request starts waiting and how its wait ended (for metrics)."""

    def queue_entered(self) -> None: ...

    def queue_left(self, waited_s: float, result: str) -> None:
        """``result``: served, timeout, refused or cancelled."""


@dataclass(slots=True)
class QueueStats:
    """Counters for metrics: how the queue's waits ended, and the time spent waiting."""

    served: int = 0
    timeouts: int = 0
    overflows: int = 0
    wait_s_total: float = 0.0


class WaitQueue:
    """The waiting requests of one replica for one pool."""

    def __init__(
        self,
        pool: AnyPool,
        *,
        max_waiting: int,
        fallback_s: float = FALLBACK_WAIT_S,
        observer: QueueObserver | None = None,
    ) -> None:
        self.pool = pool
        self.observer = observer
        self.max_waiting = max_waiting
        self.fallback_s = fallback_s
        self.stats = QueueStats()
        self.depth = 0
        self._head = asyncio.Lock()  # asyncio's Lock is FIFO: waiters take it in arrival order
        self._woken = asyncio.Event()
        self._wakes = 0
        self._last: NoSessionAvailable | None = None
        self._last_at = 0.0  # when _last came (the loop's clock)
        self._listener: asyncio.Task[None] | None = None
        self._leaving: set[asyncio.Task[None]] = set()
        self._closing = False

    def start(self) -> None:
        """Listen for wake-ups from the store (call inside the running event loop)."""
        if self._listener is None:
            self._listener = asyncio.create_task(self._listen())

    async def close(self) -> None:
        if self._leaving:
            await asyncio.gather(*self._leaving, return_exceptions=True)
        if self._listener is not None:
            self._closing = True
            self._listener.cancel()
            await asyncio.wait({self._listener}, timeout=CLOSE_TIMEOUT_S)
            self._listener = None

    def wake(self) -> None:
        self._wakes += 1
        self._woken.set()

    async def _listen(self) -> None:
        """Subscribe to the pool's wake channel; reconnect with backoff when the store drops."""
        delay = 0.1
        while not self._closing:
            pubsub = self.pool.redis.pubsub()
            try:
                await pubsub.subscribe(*self.pool.wake_channels)
                delay = 0.1
                self.wake()  # anything published while we were away is caught up by a retry
                while not self._closing:
                    # A bounded read, not listen(), and a flag besides cancel(): the embedded
                    # store's pub/sub can swallow a cancellation. Only the socket waits here;
                    # nothing is sent to the store.
                    message = await pubsub.get_message(
                        ignore_subscribe_messages=True, timeout=LISTEN_SLICE_S
                    )
                    if message is not None:
                        self.wake()
            except (RedisError, OSError) as exc:
                log.debug("wake channel lost; waiters fall back to timers", error=str(exc))
            except AttributeError:  # a client without pub/sub: timers only
                log.info("no pub/sub on this store; waiters poll at their deadlines")
                return
            finally:
                with suppress(RedisError, OSError, AttributeError, TimeoutError):
                    closing = pubsub.aclose()  # type: ignore[no-untyped-call]
                    await asyncio.wait_for(closing, CLOSE_TIMEOUT_S)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)

    async def acquire(
        self, *, exclude: Collection[str] = (), timeout_s: float = 0.0, precharge: int = 0
    ) -> Lease:
        """A lease, waiting up to ``timeout_s`` when none is free (``precharge``: see Pool.acquire).

        Raises NoSessionAvailable at once when waiting cannot help (nothing enabled, every session
        tried, or the earliest known moment is past the deadline), after ``timeout_s`` otherwise;
        QueueFull when max_waiting requests already wait here.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        ticket = Ticket(uuid.uuid4().hex, TICKET_TTL_MS) if timeout_s > 0 else None
        if self.depth == 0:
            try:
                return await self.pool.acquire(exclude=exclude, ticket=ticket, precharge=precharge)
            except NoSessionAvailable as exc:
                self._refused(exc, ticket, deadline - loop.time())
        elif ticket is None:
            if self._last is None:
                raise NoSessionAvailable(Refusal.QUEUED, None, {})
            raise NoSessionAvailable(*self._since_last())
        if self.depth >= self.max_waiting:
            self.stats.overflows += 1
            reason, wait_ms, counts = self._since_last()
            raise QueueFull(reason, wait_ms, counts)
        assert ticket is not None
        started = loop.time()
        result = "cancelled"
        if self.observer is not None:
            self.observer.queue_entered()
        async with self._waiting(ticket):
            try:
                async with asyncio.timeout_at(deadline), self._head:
                    lease = await self._wait_at_head(exclude, ticket, deadline, precharge)
            except TimeoutError:
                result = "timeout"
                self.stats.timeouts += 1
                raise NoSessionAvailable(*self._since_last()) from None
            except NoSessionAvailable:
                result = "refused"  # waiting stopped helping (e.g. every session was disabled)
                raise
            else:
                result = "served"
            finally:
                waited = loop.time() - started
                self.stats.wait_s_total += waited
                if self.observer is not None:
                    self.observer.queue_left(waited, result)
        self.stats.served += 1
        return lease

    def _since_last(self) -> tuple[str, int | None, dict[str, int]]:
        """The last refusal's reason, its wait less the time gone since, and its counts."""
        last = self._last
        if last is None:
            return Refusal.BUSY, None, {}
        wait_ms = last.retry_after_ms
        if wait_ms is not None:
            gone_ms = (asyncio.get_running_loop().time() - self._last_at) * 1000
            wait_ms = max(0, round(wait_ms - gone_ms))
        return last.reason, wait_ms, last.counts

    def _refused(self, exc: NoSessionAvailable, ticket: Ticket | None, left_s: float) -> None:
        """Remember a refusal; re-raise it when waiting cannot help within ``left_s``."""
        if exc.reason != Refusal.QUEUED or self._last is None:
            self._last = exc  # 'queued' says others wait, not why: keep the reason they wait for
            self._last_at = asyncio.get_running_loop().time()
        if ticket is not None:
            ticket.held = True  # a refused ticket holder keeps (or takes) its place in the store
            if not ticket.arrival_ms and exc.store_now_ms is not None:
                ticket.arrival_ms = exc.store_now_ms
        # A busy session's lease may end any moment: its expiry is a bound, not the earliest.
        known = exc.retry_after_ms if exc.reason not in (Refusal.BUSY, Refusal.QUEUED) else None
        too_late = known is not None and known / 1000 > left_s
        if ticket is None or exc.reason not in WAITABLE or too_late:
            raise exc

    @asynccontextmanager
    async def _waiting(self, ticket: Ticket) -> AsyncIterator[None]:
        self.depth += 1
        try:
            yield
        finally:
            self.depth -= 1
            if ticket.held:
                # Timed out or cancelled (the client went away): give the place up now, in the
                # background so that even a cancelled request does.
                leaving = asyncio.create_task(self._leave(ticket))
                self._leaving.add(leaving)
                leaving.add_done_callback(self._leaving.discard)

    async def _leave(self, ticket: Ticket) -> None:
        with suppress(StoreError):
            await self.pool.leave_queue(ticket)

    async def _wait_at_head(
        self, exclude: Collection[str], ticket: Ticket, deadline: float, precharge: int
    ) -> Lease:
        loop = asyncio.get_running_loop()
        while True:
            seen = self._wakes
            try:
                lease = await self.pool.acquire(exclude=exclude, ticket=ticket, precharge=precharge)
            except NoSessionAvailable as exc:
                self._refused(exc, ticket, deadline - loop.time())
                if self._wakes != seen:
                    continue  # a wake arrived while we asked: ask again at once
                known = exc.retry_after_ms / 1000 if exc.retry_after_ms is not None else None
                if known is not None and exc.reason == Refusal.QUEUED:
                    known = max(known, QUEUED_PAUSE_S)
                await self._sleep(self.fallback_s if known is None else min(known, self.fallback_s))
                continue
            ticket.held = False  # the store dropped it when it granted the lease
            return lease

    async def _sleep(self, at_most_s: float) -> None:
        self._woken.clear()
        with suppress(TimeoutError):
            await asyncio.wait_for(self._woken.wait(), at_most_s)
