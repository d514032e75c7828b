"""One pool spread over several hash slots ("shards"), so that a Redis Cluster spreads it over
its nodes: a composition of ordinary ``Pool`` objects, one per shard, each with its own hash tag.

* **Layout** (broker/shard_layout.py). Shard ``k`` of pool ``P`` spread over ``N`` shards is
  the pool named by ``shard_names`` (``P#k``, or ``P#k.j`` for the first ``j`` that puts its hash
  tag in the ``k``-th ``N``-th of the cluster's slot space): on a cluster whose nodes hold equal
  runs of slots (what ``redis-cli --cluster create`` makes), ``N`` shards on ``N`` nodes land one
  per node. The names depend on ``P`` and ``N`` only, so every replica and operator command
  agrees on them. ``N = 1`` is the pool itself, keys and all, with no wrapper (``open_pool``).
* **Placement.** A session lives in exactly one shard, ``shard_of`` (a BLAKE2b hash of its id,
  modulo ``N``): every replica syncs it there, so its cooldown, quota, learned rate, breaker and
  concurrency are kept by one script on one slot, exactly as in an unsharded pool.
* **Choice.** An acquire asks the better of two shards drawn at random, by what this replica
  already knows of them (no extra round trip): a shard that refused lately is skipped for
  ``REFUSAL_MEMORY_S`` (or until the earliest moment it said one frees, when sooner), and of the
  others the less loaded goes first: the leases this replica holds there and was granted there
  lately (fading by half every ``GRANT_HALF_LIFE_S``), per session the shard has. So traffic
  spreads over the shards in proportion to their sessions, and away from a shard whose leases
  last long or that refuses. When the chosen shard has nothing eligible the others are asked in
  turn, best first; the refusal of a request that none can serve sums their counts and gives the
  earliest moment any of them named.
* **Leases** carry their shard in their id (``<id>@<k>``): a release or renewal goes to the
  shard that granted it, by the lease alone.

What becomes per shard -- strategy order, priority tiers, the fleet-wide wait queue, the alerts
that read a whole pool -- is set out in docs/scaling.md.
"""

from __future__ import annotations

import asyncio
import math
import random
import secrets
import time
import uuid
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass, replace

from broker.errors import BrokerError, LeaseError, NoSessionAvailable, StoreError
from broker.events import Transition
from broker.gateway import TransitionListener
from broker.leases import Lease, Outcome, Release, Released, Ticket
from broker.pool import Pool
from broker.sessions import Session
from broker.settings import BrokerSettings
from broker.shard_layout import LEASE_SHARD_SEPARATOR, shard_names, shard_of, shard_of_lease
from broker.states import DisableReason, Refusal, SessionState
from broker.store import Store

__all__ = ["REFUSAL_MEMORY_S", "AnyPool", "ShardedPool", "open_pool"]

#: How long a shard that refused an acquire is passed over by this replica's acquires (seconds),
#: unless it named an earlier moment: long enough that a pool with one shard spent does not pay
#: a wasted round trip per request, short enough that a shard freeing up is soon used again.
REFUSAL_MEMORY_S = 0.1
#: How fast what this replica sent to a shard fades from its choice (seconds to halve).
GRANT_HALF_LIFE_S = 1.0
#: The load of a shard this replica's configuration puts no session in: asked last.
_NO_SESSIONS = 1e9

#: How much a refusal reason says a shard may soon serve: a combined refusal keeps the highest.
_REASON_RANK: dict[str, int] = {
    Refusal.QUEUED: 7,
    Refusal.BUSY: 6,
    Refusal.COOLING: 5,
    Refusal.QUOTA: 5,
    Refusal.OPEN: 5,
    Refusal.TRIED: 3,
    Refusal.DISABLED: 2,
    Refusal.EMPTY: 1,
}


@dataclass(slots=True)
class _ShardNews:
    """What this replica knows of one shard, without asking it."""

    #: Sessions this replica's configuration puts in the shard.
    sessions: int = 0
    #: Leases this replica holds on it (granted through this object, not yet released).
    held: int = 0
    #: Leases this replica was granted on it lately: each counts 1 when granted, halving every
    #: GRANT_HALF_LIFE_S (so the choice follows what this replica sent where).
    granted: float = 0.0
    granted_at: float = 0.0
    #: Passed over until then (time.monotonic()), after a refusal.
    refused_until: float = 0.0
    #: The last refusal: its reason, earliest moment (store ms), store clock and counts.
    refusal: NoSessionAvailable | None = None

    def load(self, now: float) -> float:
        """Leases held and granted lately per session (lower is better); infinite while the
        shard is passed over after a refusal."""
        if now < self.refused_until:
            return math.inf
        if not self.sessions:
            return _NO_SESSIONS
        return (self.held + self._granted(now)) / self.sessions

    def _granted(self, now: float) -> float:
        return self.granted * math.pow(0.5, (now - self.granted_at) / GRANT_HALF_LIFE_S)

    def grant(self, now: float) -> None:
        self.granted = self._granted(now) + 1
        self.granted_at = now
        self.held += 1
        self.refused_until = 0.0


class ShardedPool:
    """One pool spread over several shards, as seen by one replica; takes the calls a ``Pool``
    takes (sync, acquire, release, renew, ...) and routes each to its shard."""

    def __init__(
        self,
        redis: Store,
        settings: BrokerSettings,
        *,
        name: str | None = None,
        listener: TransitionListener | None = None,
        claimant: str | None = None,
    ) -> None:
        self.name = name or settings.pool
        self.redis = redis
        self._settings = settings
        self.count = settings.shards
        if self.count < 2:
            raise ValueError("a ShardedPool has 2 shards or more; open_pool makes a Pool for 1")
        heard = None if listener is None else self._relabel(listener)
        #: One replica, one claim id on every shard (operators see one replica per process).
        self.claimant = claimant or uuid.uuid4().hex
        #: The shards, in index order; each an ordinary Pool under its own hash tag.
        self.shards = [
            Pool(redis, settings, name=shard, listener=heard, claimant=self.claimant)
            for shard in shard_names(self.name, self.count)
        ]
        self._news = [_ShardNews() for _ in self.shards]

    def _relabel(self, listener: TransitionListener) -> TransitionListener:
        """Transitions reach the listener under the pool's name (metrics and alerts see one
        pool); the log lines the gateway writes name the shard."""

        def heard(transitions: list[Transition]) -> None:
            listener([replace(t, pool=self.name) for t in transitions])

        return heard

    @property
    def settings(self) -> BrokerSettings:
        return self._settings

    @settings.setter
    def settings(self, settings: BrokerSettings) -> None:
        """New pool-wide settings (a reload): every shard writes them at its next sync."""
        self._settings = settings
        for shard in self.shards:
            shard.settings = settings

    @property
    def wake_channels(self) -> list[str]:
        return [shard.keys.wake_channel for shard in self.shards]

    def shard_for(self, session_id: str) -> Pool:
        return self.shards[shard_of(session_id, self.count)]

    # Claims: each shard gets the sessions that live in it.

    async def sync(self, sessions: Sequence[Session]) -> int:
        """Claim ``sessions``, each in its shard (see ``Pool.sync``); sessions in the pool."""
        parts: list[list[Session]] = [[] for _ in self.shards]
        for session in sessions:
            parts[shard_of(session.id, self.count)].append(session)
        for news, part in zip(self._news, parts, strict=True):
            news.sessions = len(part)
        sizes = [await shard.sync(part) for shard, part in zip(self.shards, parts, strict=True)]
        return sum(sizes)

    async def keep_claim(self) -> int:
        return sum([await shard.keep_claim() for shard in self.shards])

    async def leave(self) -> int:
        return sum([await shard.leave() for shard in self.shards])

    # Leases.

    def _order(self, *, everything: bool) -> Iterator[int]:
        """The shards to ask, in turn: the better of two drawn at random, then (only when it
        refused: most acquires need no more) the others best first; those that refused lately
        are left out, unless ``everything`` (a waiting request must see every shard)."""
        now = time.monotonic()
        first = random.randrange(self.count)
        second = (first + 1 + random.randrange(self.count - 1)) % self.count
        news = self._news
        pick = second if news[second].load(now) < news[first].load(now) else first
        if news[pick].load(now) == math.inf:  # both refused lately: the best of them all
            pick = min(range(self.count), key=lambda k: news[k].load(now))
        yield pick
        loads = [n.load(now) for n in news]
        rest = sorted((k for k in range(self.count) if k != pick), key=loads.__getitem__)
        yield from (k for k in rest if everything or loads[k] < math.inf)

    async def acquire(
        self,
        *,
        exclude: Collection[str] = (),
        lease_id: str | None = None,
        ticket: Ticket | None = None,
        precharge: int = 0,
    ) -> Lease:
        """Lease an eligible session from one of the shards (see the module's docstring);
        raises NoSessionAvailable when none of those asked has one. Arguments as
        ``Pool.acquire``; a given ``lease_id`` gets the shard's index appended."""
        base = lease_id or secrets.token_hex(16)
        excluded: list[list[str]] = [[] for _ in self.shards]
        for session_id in exclude:  # each shard is told of its own sessions only
            excluded[shard_of(session_id, self.count)].append(session_id)
        refusals: list[NoSessionAvailable] = []
        for k in self._order(everything=ticket is not None):
            try:
                lease = await self.shards[k].acquire(
                    exclude=excluded[k],
                    lease_id=f"{base}{LEASE_SHARD_SEPARATOR}{k}",
                    ticket=ticket,
                    precharge=precharge,
                )
            except NoSessionAvailable as refusal:
                self._refused(k, refusal, ticket)
                refusals.append(refusal)
                continue
            self._news[k].grant(time.monotonic())
            if ticket is not None:
                await self._unqueue(ticket, granted_at=k)
            # The pool's name, not the shard's (metrics and logs see one pool); built directly,
            # dataclasses.replace costs several times more.
            return Lease(
                self.name,
                lease.session_id,
                lease.lease_id,
                lease.expires_at_ms,
                lease.probe,
                lease.granted_at_ms,
            )
        raise self._combined(refusals)

    def _refused(self, k: int, refusal: NoSessionAvailable, ticket: Ticket | None) -> None:
        if ticket is not None:
            ticket.shards.add(k)
        if refusal.reason == Refusal.TRIED:
            return  # says what this request excluded, not what the shard has
        news = self._news[k]
        memory = REFUSAL_MEMORY_S
        if refusal.retry_after_ms is not None and refusal.reason not in (
            Refusal.BUSY,
            Refusal.QUEUED,
        ):
            memory = min(memory, refusal.retry_after_ms / 1000)
        news.refused_until = time.monotonic() + memory
        news.refusal = refusal

    def _combined(self, refusals: list[NoSessionAvailable]) -> NoSessionAvailable:
        """One refusal for the request, from those of the shards asked and, for the others,
        the last each gave (their counts and earliest moment, taken as still true)."""
        asked = {id(r) for r in refusals}
        known = refusals + [
            n.refusal for n in self._news if n.refusal is not None and id(n.refusal) not in asked
        ]
        reason = max((r.reason for r in known), key=lambda r: _REASON_RANK.get(r, 0))
        waits = [r.retry_after_ms for r in known if r.retry_after_ms is not None]
        counts: dict[str, int] = {}
        for refusal in known:
            for state, count in refusal.counts.items():
                counts[state] = counts.get(state, 0) + count
        return NoSessionAvailable(
            reason,
            min(waits) if waits else None,
            counts,
            store_now_ms=refusals[0].store_now_ms if refusals else None,
        )

    async def _unqueue(self, ticket: Ticket, *, granted_at: int) -> None:
        """A waiting request was served: its ticket leaves the other shards' queues at once
        (there it would hold the line until it lapsed)."""
        queued = ticket.shards - {granted_at}
        ticket.shards = set()
        if queued:
            await asyncio.gather(*(self.shards[k].leave_queue(ticket) for k in queued))

    async def leave_queue(self, ticket: Ticket) -> None:
        """Give up a place in the wait queue of every shard that holds it."""
        queued = ticket.shards or set(range(self.count))
        ticket.shards = set()
        await asyncio.gather(*(self.shards[k].leave_queue(ticket) for k in queued))

    def _shard_of_lease(self, lease: Lease) -> Pool:
        k = shard_of_lease(lease.lease_id, self.count)
        if k is None:
            raise LeaseError(f"lease {lease.lease_id} names no shard of pool {self.name!r}")
        return self.shards[k]

    def _returned(self, lease: Lease) -> None:
        k = shard_of_lease(lease.lease_id, self.count)
        if k is not None and self._news[k].held > 0:
            self._news[k].held -= 1

    def cooldown_ms(self, wait_ms: int | None) -> int:
        return self.shards[0].cooldown_ms(wait_ms)

    async def release(
        self,
        lease: Lease,
        outcome: Outcome,
        *,
        latency_ms: int = -1,
        retry_after_ms: int | None = None,
        exhausted_ms: int | None = None,
        detail: str = "",
        units: int | None = None,
        request_kind: str = "",
        refused_by: str = "",
        seed_rpm: float | None = None,
    ) -> Released:
        """``Pool.release`` on the shard that granted ``lease``."""
        shard = self._shard_of_lease(lease)
        self._returned(lease)
        if refused_by and self.shard_for(refused_by) is not shard:
            refused_by = ""  # the 401/403 judgement weighs evidence within a shard
        return await shard.release(
            lease,
            outcome,
            latency_ms=latency_ms,
            retry_after_ms=retry_after_ms,
            exhausted_ms=exhausted_ms,
            detail=detail,
            units=units,
            request_kind=request_kind,
            refused_by=refused_by,
            seed_rpm=seed_rpm,
        )

    async def release_many(self, releases: Sequence[Release]) -> list[Released | BrokerError]:
        """``Pool.release_many``, each shard's releases in one call, the shards concurrently.
        Raises StoreError only when no shard could be reached."""
        results: list[Released | BrokerError | None] = [None] * len(releases)
        sent = list(releases)
        groups: dict[int, list[int]] = {}
        for at, release in enumerate(releases):
            k = shard_of_lease(release.lease.lease_id, self.count)
            if k is None:
                results[at] = LeaseError(
                    f"lease {release.lease.lease_id} names no shard of pool {self.name!r}"
                )
                continue
            self._returned(release.lease)
            if release.refused_by and shard_of(release.refused_by, self.count) != k:
                sent[at] = replace(release, refused_by="")  # as in release()
            groups.setdefault(k, []).append(at)
        answers = await asyncio.gather(
            *(self.shards[k].release_many([sent[at] for at in ats]) for k, ats in groups.items()),
            return_exceptions=True,
        )
        failures = [a for a in answers if isinstance(a, BaseException)]
        for failure in failures:
            if not isinstance(failure, StoreError):
                raise failure
        if failures and len(failures) == len(answers):
            raise failures[0]
        for ats, answer in zip(groups.values(), answers, strict=True):
            replies: list[Released | BrokerError] = (
                [answer] * len(ats) if isinstance(answer, StoreError) else list(answer)  # type: ignore[arg-type]
            )
            for at, result in zip(ats, replies, strict=True):
                results[at] = result
        return [r for r in results if r is not None]

    async def renew(self, lease: Lease) -> Lease:
        """``Pool.renew`` on the shard that granted ``lease``."""
        return await self._shard_of_lease(lease).renew(lease)

    # Sessions, each in its shard.

    async def disable(self, session_id: str, reason: str = DisableReason.OPERATOR) -> SessionState:
        return await self.shard_for(session_id).disable(session_id, reason)

    async def enable(self, session_id: str) -> SessionState:
        return await self.shard_for(session_id).enable(session_id)

    async def session_state(self, session_id: str) -> dict[str, str]:
        return await self.shard_for(session_id).session_state(session_id)


#: A pool as a replica leases from it: one hash tag, or spread over several.
AnyPool = Pool | ShardedPool


def open_pool(
    redis: Store,
    settings: BrokerSettings,
    *,
    name: str | None = None,
    listener: TransitionListener | None = None,
    claimant: str | None = None,
) -> AnyPool:
    """The pool ``settings`` describe: a plain ``Pool`` with one shard (today's layout, keys and
    all), a ``ShardedPool`` with more. ``claimant``: the replica's id in the pool's claims."""
    if settings.shards == 1:
        return Pool(redis, settings, name=name, listener=listener, claimant=claimant)
    return ShardedPool(redis, settings, name=name, listener=listener, claimant=claimant)
