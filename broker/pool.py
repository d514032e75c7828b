"""A pool of sessions in the store: sync, acquire, release and renew, one script call each
(through the pool's Gateway, broker/gateway.py)."""

from __future__ import annotations

import random
import secrets
import uuid
from collections.abc import Collection, Sequence
from dataclasses import replace

from broker.constants import SYNC_CHUNK
from broker.errors import BrokerError, LeaseError, NoSessionAvailable, UnknownSession
from broker.gateway import Gateway, TransitionListener, store_call
from broker.keys import PoolKeys
from broker.leases import Lease, Outcome, Release, Released, Ticket
from broker.replies import Ended, ReleaseCall, SyncReply, SyncStep
from broker.sessions import Session
from broker.settings import BrokerSettings
from broker.states import DisableReason, LeaseStatus, SessionState
from broker.store import Store

__all__ = ["Pool", "TransitionListener"]


class Pool:
    """One pool of sessions in the store, as seen by one replica."""

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
        self.keys = PoolKeys(self.name)
        self.redis = redis
        self.settings = settings
        #: Every script call of this pool; ``listener`` hears every transition this replica's
        #: calls made (for alerting and metrics).
        self.gateway = Gateway(redis, self.keys, listener=listener)
        #: Who claims the sessions this object syncs: one replica, one id (see ``sync``); a
        #: replica passes its own id, the one its logs, metrics and admin API show.
        self.claimant = claimant or uuid.uuid4().hex
        self._claimed: Sequence[Session] | None = None

    @property
    def wake_channels(self) -> list[str]:
        """Where the scripts say a session became available (``WaitQueue`` listens)."""
        return [self.keys.wake_channel]

    async def sync(self, sessions: Sequence[Session]) -> int:
        """Claim ``sessions`` (ids and limits only; never secrets) for this replica.

        The pool holds every session some live replica's claim names: the ones named here join
        it, and those this replica named before and no live claim names any more leave it (never
        leased again; their history and in-flight leases are kept). Replicas that briefly
        disagree, as in a rollout, so never remove each other's sessions. The claim lasts
        ``settings.claim_ttl_ms``: a long-running replica calls ``keep_claim`` more often than
        that, and ``leave`` when it stops. Returns the number of sessions in the pool.
        """
        self._claimed = list(sessions)
        return await self._sync_all(self._claimed)

    async def keep_claim(self) -> int:
        """Renew this replica's claim; sync again if it had expired (the store was out of reach
        for longer than the claim TTL). Also drops other replicas' expired claims, so sessions
        only a dead replica named leave the pool. Returns the number of sessions in the pool."""
        reply = await self._sync_step(SyncStep.RENEW)
        if reply.lost and self._claimed is not None:
            return await self._sync_all(self._claimed)
        return reply.size

    async def leave(self) -> int:
        """Drop this replica's claim: the sessions no other live replica names leave the pool
        at once, rather than when the claim expires."""
        self._claimed = None
        return (await self._sync_step(SyncStep.LEAVE)).size

    async def _sync_all(self, sessions: Sequence[Session]) -> int:
        # A large pool goes in several calls; the last one makes the collected ids the claim.
        generation = uuid.uuid4().hex
        starts = range(0, max(len(sessions), 1), SYNC_CHUNK)
        size = 0
        for start in starts:
            step = SyncStep.LAST if start == starts[-1] else SyncStep.PART
            chunk = sessions[start : start + SYNC_CHUNK]
            size = (await self._sync_step(step, generation, chunk)).size
        return size

    async def _sync_step(
        self, step: SyncStep, generation: str = "", sessions: Sequence[Session] = ()
    ) -> SyncReply:
        config = self.settings
        return await self.gateway.sync(
            step=step,
            replica=self.claimant,
            claim_ttl_ms=config.claim_ttl_ms,
            generation=generation,
            sessions=sessions,
            strategy=config.strategy,
            breaker_threshold=config.breaker_threshold,
            breaker_timeout_ms=config.breaker_timeout_ms,
            breaker_timeout_max_ms=max(config.breaker_timeout_max_ms, config.breaker_timeout_ms),
            half_open_probes=config.half_open_probes,
            cooldown_max_ms=config.rate_limit_cooldown_max_ms,
            breaker_window=config.breaker_window,
            breaker_min_calls=config.breaker_min_calls,
            breaker_failure_ratio=config.breaker_failure_ratio,
            rate_learning=config.rate_learning,
        )

    async def acquire(
        self,
        *,
        exclude: Collection[str] = (),
        lease_id: str | None = None,
        ticket: Ticket | None = None,
        precharge: int = 0,
    ) -> Lease:
        """Lease an eligible session other than those in ``exclude``.

        The session comes from the highest priority tier that has one; within it the pool's
        strategy picks. Raises NoSessionAvailable when there is none, saying why and when one may
        be. With a ``ticket`` the caller means to wait: it keeps a place in the fleet-wide queue,
        and while older tickets wait only the oldest may lease (others get reason ``queued``).
        ``precharge`` units (an estimate, e.g. from ``max_tokens``) are charged to the session's
        unit budget at once; ``release`` settles them against the units reported.
        """
        if precharge < 0:
            raise ValueError("precharge must be >= 0")
        lease_id = lease_id or secrets.token_hex(16)  # a uuid4().hex's shape, cheaper
        reply = await self.gateway.acquire(
            lease_id=lease_id,
            ttl_ms=self.settings.lease_ttl_ms,
            seed=random.getrandbits(31),
            ticket_id="" if ticket is None else ticket.id,
            arrival_ms=0 if ticket is None else ticket.arrival_ms,
            ticket_ttl_ms=0 if ticket is None else ticket.ttl_ms,
            precharge=precharge,
            exclude=exclude,
        )
        if isinstance(reply, Lease):
            return reply
        if isinstance(reply, Ended):
            raise LeaseError(f"lease {lease_id} already ended; make a new lease id per acquire")
        earliest = reply.earliest_ms
        raise NoSessionAvailable(
            reply.reason,
            None if earliest is None else max(0, earliest - reply.now_ms),
            reply.counts,
            store_now_ms=reply.now_ms,
        )

    async def leave_queue(self, ticket: Ticket) -> None:
        """Give up a place in the fleet-wide queue (the next in line is woken)."""
        await self.gateway.leave_queue(ticket_id=ticket.id)

    def cooldown_ms(self, wait_ms: int | None) -> int:
        """The cooldown for a 429: the upstream's wait if usable, else the default; clamped."""
        wanted = self.settings.rate_limit_cooldown_ms if wait_ms is None else wait_ms
        return max(0, min(wanted, self.settings.rate_limit_cooldown_max_ms))

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
        """End ``lease`` and record ``outcome``. Idempotent: a replay changes nothing.

        ``retry_after_ms`` is the upstream's requested wait after a 429 (None: not given or not
        usable); ``exhausted_ms`` the wait until its rate-limit headers say the session has quota
        again, when they say none is left (it cools the session before any 429, and stands in for
        a missing Retry-After); ``detail`` a status code or error class name for ``last_error``.
        ``units`` is what the attempt consumed (e.g. the upstream's ``usage.total_tokens``): it
        replaces the lease's pre-charge in the session's unit budget. None keeps the pre-charge
        (refunded when the outcome is ``unused``). A replayed release counts its units once.
        ``request_kind`` and ``refused_by`` feed the 401/403 judgement (``Release``'s fields).
        ``seed_rpm`` is a rate the upstream's headers state (requests a minute): it sets the
        session's rate before any 429 (docs/learning.md).
        """
        release = Release(
            lease,
            outcome,
            latency_ms,
            retry_after_ms,
            exhausted_ms,
            detail,
            units,
            request_kind,
            refused_by,
            seed_rpm,
        )
        result = self._released(release, await self.gateway.release(self._release_call(release)))
        if isinstance(result, LeaseError):
            raise result
        return result

    async def release_many(self, releases: Sequence[Release]) -> list[Released | BrokerError]:
        """Several releases, each its own script call (as ``release`` makes it), sent together:
        in one write on a standalone Redis, concurrently on other stores.

        Returns, in order, each one's Released, or the error its call came to: LeaseError (an
        unknown lease) or StoreError (the script failed). Raises StoreError when the store could
        not be reached for them at all (the leases then expire by themselves).
        """
        calls = [self._release_call(r) for r in releases]
        replies = await self.gateway.release_many(calls)
        return [
            reply if isinstance(reply, BrokerError) else self._released(release, reply)
            for release, reply in zip(releases, replies, strict=True)
        ]

    def _release_call(self, release: Release) -> ReleaseCall:
        """What release.lua is told: the cooldown judged from the upstream's waits."""
        retry_after_ms, exhausted_ms = release.retry_after_ms, release.exhausted_ms
        wait = retry_after_ms if retry_after_ms is not None else exhausted_ms
        if (
            retry_after_ms is not None
            and exhausted_ms is not None
            and retry_after_ms - 1000 < exhausted_ms <= retry_after_ms
        ):
            # Retry-After counts whole seconds, rounded up; a rate-limit reset that says the
            # same to the millisecond is the better figure (a "1" often means 0.2 s).
            wait = exhausted_ms
        if release.outcome is Outcome.RATE_LIMITED:
            cooldown = self.cooldown_ms(wait)
        else:
            cooldown = -1 if exhausted_ms is None else self.cooldown_ms(exhausted_ms)
        return ReleaseCall(
            release.lease.lease_id,
            release.outcome,
            release.latency_ms,
            cooldown,
            release.detail,
            release.units,
            release.request_kind,
            release.refused_by,
            granted_at_ms=release.lease.granted_at_ms,
            wait_stated=wait is not None,
            seed_rpm=release.seed_rpm or 0.0,
        )

    def _released(self, release: Release, reply: Released) -> Released | LeaseError:
        lease = release.lease
        if reply.status is LeaseStatus.UNKNOWN:
            return LeaseError(f"lease {lease.lease_id} is unknown to pool {self.name!r}")
        return replace(reply, session_id=reply.session_id or lease.session_id)

    async def renew(self, lease: Lease) -> Lease:
        """Extend a live lease by the lease TTL. Raises LeaseError if it is no longer live."""
        expiry = await self.gateway.renew(
            lease_id=lease.lease_id, ttl_ms=self.settings.lease_ttl_ms
        )
        if expiry is None:
            raise LeaseError(f"lease {lease.lease_id} is no longer live (released or expired)")
        return Lease(
            lease.pool, lease.session_id, lease.lease_id, expiry, lease.probe, lease.granted_at_ms
        )

    async def disable(self, session_id: str, reason: str = DisableReason.OPERATOR) -> SessionState:
        """Take a session out of use, fleet-wide, until ``enable``; returns its new state."""
        if not reason:
            raise ValueError("a disable needs a reason")
        return await self._set_disabled(session_id, reason)

    async def enable(self, session_id: str) -> SessionState:
        """Put a disabled session (by an operator or a 401/403) back into use; its new state."""
        return await self._set_disabled(session_id, "")

    async def _set_disabled(self, session_id: str, reason: str) -> SessionState:
        state = await self.gateway.set_disabled(session_id=session_id, reason=reason)
        if state is None:
            raise UnknownSession(f"pool {self.name!r} has no session {session_id!r}")
        return state

    async def session_state(self, session_id: str) -> dict[str, str]:
        """The session's hash as stored (what ``HGETALL`` shows an operator)."""
        state: dict[str, str] = await store_call(
            "read", self.redis.hgetall(self.keys.session(session_id))
        )
        return state
