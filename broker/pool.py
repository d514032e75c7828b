"""A pool of sessions in the store: sync, acquire, release and renew, one script call each."""

from __future__ import annotations

import asyncio
import random
import secrets
import uuid
from collections.abc import Awaitable, Callable, Collection, Sequence
from typing import Any

from redis.exceptions import RedisError

from broker.constants import (
    HEALTH_ALPHA,
    HEALTH_FLOOR,
    HEALTH_HALF_LIFE_MS,
    HEALTH_LATENCY_TARGET_MS,
    LEASE_MEMORY_MS,
    QUOTA_SLACK,
    RATE_LIMIT_STREAK_WINDOW_MS,
    SYNC_CHUNK,
)
from broker.errors import BrokerError, LeaseError, NoSessionAvailable, StoreError, UnknownSession
from broker.events import Transition, emit, parse
from broker.keys import PoolKeys
from broker.lane import Lane
from broker.leases import Lease, Outcome, Release, Released, Ticket
from broker.scripts import Scripts
from broker.sessions import Session
from broker.settings import BrokerSettings
from broker.store import Store

#: Hears the transitions a pool's script calls made (a session's state or breaker changing).
TransitionListener = Callable[[list[Transition]], None]

_COUNTS = ("available", "cooling", "busy", "disabled", "open", "quota")
#: Values sync.lua takes per session (see its header).
_SYNC_FIELDS = 8


async def _call(operation: str, pending: Awaitable[Any]) -> Any:
    try:
        return await pending
    except RedisError as exc:
        raise StoreError(f"{operation} failed: {type(exc).__name__}: {exc}") from exc


class Pool:
    """One pool of sessions in the store, as seen by one replica."""

    def __init__(
        self,
        redis: Store,
        settings: BrokerSettings,
        *,
        name: str | None = None,
        listener: TransitionListener | None = None,
    ) -> None:
        self.name = name or settings.pool
        #: Hears every transition this replica's calls made (for alerting and metrics).
        self._listener = listener
        self.keys = PoolKeys(self.name)
        self.redis = redis
        self.settings = settings
        #: The scripts' one KEY: they derive every other key of the pool from it.
        self._script_keys = (self.keys.base,)
        self._scripts = Scripts.register(redis)
        #: A lighter call path on a standalone Redis (see broker/lane.py); None: redis-py's Script.
        self._lane = Lane.of(redis)
        #: Who claims the sessions this object syncs: one replica, one id (see ``sync``).
        self.claimant = uuid.uuid4().hex
        self._claimed: list[object] | None = None

    async def _run(self, operation: str, *args: object) -> list[Any]:
        """Run one script; log the transitions it made; return its reply without them."""
        script = getattr(self._scripts, operation)
        keys, args = self._script_keys, (LEASE_MEMORY_MS, *args)
        pending = (
            script(keys=keys, args=args, client=self.redis)
            if self._lane is None
            else self._lane.evalsha(script, keys, args)
        )
        return self._settle(await _call(operation, pending))

    def _settle(self, raw: list[Any]) -> list[Any]:
        """A script's reply without its events, which are logged and handed on."""
        *reply, events = raw
        transitions = parse(self.name, events)
        emit(transitions)
        if transitions and self._listener is not None:
            self._listener(transitions)
        return list(reply)

    async def sync(self, sessions: Sequence[Session]) -> int:
        """Claim ``sessions`` (ids and limits only; never secrets) for this replica.

        The pool holds every session some live replica's claim names: the ones named here join
        it, and those this replica named before and no live claim names any more leave it (never
        leased again; their history and in-flight leases are kept). Replicas that briefly
        disagree, as in a rollout, so never remove each other's sessions. The claim lasts
        ``settings.claim_ttl_ms``: a long-running replica calls ``keep_claim`` more often than
        that, and ``leave`` when it stops. Returns the number of sessions in the pool.
        """
        values: list[object] = []
        for s in sessions:
            values += [
                s.id,
                s.weight,
                s.max_concurrency or 0,
                s.rpm or 0,
                s.burst,
                int(s.enabled),
                s.priority,
                s.tpm or 0,
            ]
        self._claimed = values
        return await self._sync_all(values)

    async def keep_claim(self) -> int:
        """Renew this replica's claim; sync again if it had expired (the store was out of reach
        for longer than the claim TTL). Also drops other replicas' expired claims, so sessions
        only a dead replica named leave the pool. Returns the number of sessions in the pool."""
        size, status = await self._sync_step("renew")
        if status == "lost" and self._claimed is not None:
            size = await self._sync_all(self._claimed)
        return size

    async def leave(self) -> int:
        """Drop this replica's claim: the sessions no other live replica names leave the pool
        at once, rather than when the claim expires."""
        self._claimed = None
        size, _ = await self._sync_step("leave")
        return size

    async def _sync_all(self, values: list[object]) -> int:
        # A large pool goes in several calls; the last one makes the collected ids the claim.
        generation = uuid.uuid4().hex
        step = SYNC_CHUNK * _SYNC_FIELDS
        starts = range(0, max(len(values), 1), step)
        size = 0
        for start in starts:
            kind = "last" if start == starts[-1] else "part"
            size, _ = await self._sync_step(kind, generation, *values[start : start + step])
        return size

    async def _sync_step(self, step: str, generation: str = "", *values: object) -> tuple[int, str]:
        config = self.settings
        size, status = await self._run(
            "sync",
            config.strategy.value,
            self.claimant,
            config.claim_ttl_ms,
            step,
            generation,
            # Pool-wide tunables: the last replica to sync writes them.
            config.breaker_threshold,
            config.breaker_timeout_ms,
            max(config.breaker_timeout_max_ms, config.breaker_timeout_ms),
            config.half_open_probes,
            RATE_LIMIT_STREAK_WINDOW_MS,
            QUOTA_SLACK,
            *values,
        )
        return int(size), str(status)

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
        queueing = ("", 0, 0) if ticket is None else (ticket.id, ticket.arrival_ms, ticket.ttl_ms)
        reply = await self._run(
            "acquire",
            lease_id,
            self.settings.lease_ttl_ms,
            random.getrandbits(31),
            *queueing,
            precharge,
            *exclude,
        )
        if reply[0] == "ok":
            return Lease(self.name, reply[1], reply[2], int(reply[3]), probe=bool(reply[4]))
        if reply[0] == "ended":
            raise LeaseError(f"lease {lease_id} already ended; make a new lease id per acquire")
        _, reason, earliest, now, counts = reply
        retry_after = None if int(earliest) < 0 else max(0, int(earliest) - int(now))
        raise NoSessionAvailable(
            reason,
            retry_after,
            dict(zip(_COUNTS, map(int, counts), strict=True)),
            store_now_ms=int(now),
        )

    async def leave_queue(self, ticket: Ticket) -> None:
        """Give up a place in the fleet-wide queue (the next in line is woken)."""
        await self._run("leave_queue", ticket.id)

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
    ) -> Released:
        """End ``lease`` and record ``outcome``. Idempotent: a replay changes nothing.

        ``retry_after_ms`` is the upstream's requested wait after a 429 (None: not given or not
        usable); ``exhausted_ms`` the wait until its rate-limit headers say the session has quota
        again, when they say none is left (it cools the session before any 429, and stands in for
        a missing Retry-After); ``detail`` a status code or error class name for ``last_error``.
        ``units`` is what the attempt consumed (e.g. the upstream's ``usage.total_tokens``): it
        replaces the lease's pre-charge in the session's unit budget. None keeps the pre-charge
        (refunded when the outcome is ``unused``). A replayed release counts its units once.
        """
        release = Release(lease, outcome, latency_ms, retry_after_ms, exhausted_ms, detail, units)
        result = self._released(release, await self._run("release", *self._release_args(release)))
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
        arguments = [(LEASE_MEMORY_MS, *self._release_args(r)) for r in releases]
        if self._lane is not None:
            lane = self._lane.evalsha_many(self._scripts.release, self._script_keys, arguments)
            raws: list[Any] = await _call("release", lane)
        elif len(arguments) == 1:
            raws = [await _call("release", self._run_raw("release", arguments[0]))]
        else:
            calls = (_call("release", self._run_raw("release", a)) for a in arguments)
            raws = await asyncio.gather(*calls, return_exceptions=True)
        results: list[Released | BrokerError] = []
        for release, raw in zip(releases, raws, strict=True):
            if isinstance(raw, StoreError):
                results.append(raw)
            elif isinstance(raw, RedisError):
                results.append(StoreError(f"release failed: {type(raw).__name__}: {raw}"))
            elif isinstance(raw, BaseException):
                raise raw
            else:
                results.append(self._released(release, self._settle(raw)))
        return results

    async def _run_raw(self, operation: str, args: tuple[object, ...]) -> Any:
        """One script through redis-py's Script, its reply with the events."""
        script = getattr(self._scripts, operation)
        return await script(keys=self._script_keys, args=args, client=self.redis)

    def _release_args(self, release: Release) -> tuple[object, ...]:
        """release.lua's arguments after the first (see its header)."""
        units, retry_after_ms, exhausted_ms = (
            release.units,
            release.retry_after_ms,
            release.exhausted_ms,
        )
        if units is not None and units < 0:
            raise ValueError("units must be >= 0")
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
        return (
            release.lease.lease_id,
            release.outcome.value,
            release.latency_ms,
            cooldown,
            release.detail,
            HEALTH_HALF_LIFE_MS,
            HEALTH_ALPHA,
            HEALTH_FLOOR,
            HEALTH_LATENCY_TARGET_MS,
            self.settings.rate_limit_cooldown_max_ms,
            -1 if units is None else units,
        )

    def _released(self, release: Release, reply: list[Any]) -> Released | LeaseError:
        status, session_id, deadline = reply
        lease = release.lease
        if status == "unknown":
            return LeaseError(f"lease {lease.lease_id} is unknown to pool {self.name!r}")
        return Released(status, session_id or lease.session_id, int(deadline))

    async def renew(self, lease: Lease) -> Lease:
        """Extend a live lease by the lease TTL. Raises LeaseError if it is no longer live."""
        status, expiry = await self._run("renew", lease.lease_id, self.settings.lease_ttl_ms)
        if status != "ok":
            raise LeaseError(f"lease {lease.lease_id} is no longer live (released or expired)")
        return Lease(lease.pool, lease.session_id, lease.lease_id, int(expiry), lease.probe)

    async def disable(self, session_id: str, reason: str = "operator") -> str:
        """Take a session out of use, fleet-wide, until ``enable``; returns its new state."""
        if not reason:
            raise ValueError("a disable needs a reason")
        return await self._set_disabled(session_id, reason)

    async def enable(self, session_id: str) -> str:
        """Put a disabled session (by an operator or a 401/403) back into use; its new state."""
        return await self._set_disabled(session_id, "")

    async def _set_disabled(self, session_id: str, reason: str) -> str:
        (state,) = await self._run("set_disabled", session_id, reason)
        if state == "unknown":
            raise UnknownSession(f"pool {self.name!r} has no session {session_id!r}")
        return str(state)

    async def session_state(self, session_id: str) -> dict[str, str]:
        """The session's hash as stored (what ``HGETALL`` shows an operator)."""
        state: dict[str, str] = await _call(
            "read", self.redis.hgetall(self.keys.session(session_id))
        )
        return state
