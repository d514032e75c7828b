"""The one owner of the Python-Lua contract: every script call of a pool goes through a Gateway.

Each operation of ``lua/`` is a method here with keyword-only, typed arguments and a decoded,
typed reply; its ARGV is encoded in that method only, in the order its script's header lists. The
gateway hands the transitions each script reports to the log and to the pool's listener, maps
Redis errors to StoreError, and calls each operation's function of the scripts' library (FCALL,
``broker/library.py``; "Function not found" loads the library and calls again) through the lane
on a standalone Redis (broker/lane.py), through redis-py elsewhere.

How a value reaches the scripts, one way each:

* code constants (``broker/constants.py``: lease memory, health, the unit window, the streak
  window, the quota slack, housekeeping bounds) are locals of the generated preamble
  (``broker/preamble.py``), never arguments;
* pool-wide operator settings (strategy, breaker threshold, timeouts and failure-rate window,
  half-open probes, the longest cooldown) are written to the pool hash by ``sync``: the last
  replica to sync wins, as a pool is one thing for the whole fleet;
* per-call facts are ARGV: lease and ticket ids, outcomes, latencies, units, the seed. So are a
  few settings that belong to the caller rather than the pool: the lease TTL (each replica's
  leases live as it renews them), the claim TTL (each replica's own claim), the cooldown a 429
  earns (judged per release from the upstream's headers, clamped to the caller's settings), and
  the alert and health-summary rules (questions a replica's timer asks; nothing on a request's
  path reads them).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Collection, Sequence
from typing import Any

from redis.exceptions import RedisError
from redis.typing import EncodableT

from broker.errors import StoreError
from broker.events import Transition, emit, parse
from broker.keys import PoolKeys
from broker.lane import Lane
from broker.leases import Lease, Released
from broker.library import Library, is_missing
from broker.replies import (
    AlertChange,
    Ended,
    Refused,
    ReleaseCall,
    SummaryTurn,
    SyncReply,
    SyncStep,
    UnitsLeft,
)
from broker.selection import Strategy
from broker.sessions import Session
from broker.states import LeaseStatus, Refusal, SessionState
from broker.store import Store

__all__ = ["Gateway", "TransitionListener", "store_call"]

#: Hears the transitions a pool's script calls made (a session's state or breaker changing).
TransitionListener = Callable[[list[Transition]], None]

#: The order of acquire.lua's counts of sessions by state.
_COUNTS = (
    SessionState.AVAILABLE,
    SessionState.COOLING,
    SessionState.BUSY,
    SessionState.DISABLED,
    SessionState.OPEN,
    SessionState.QUOTA,
)


async def store_call(operation: str, pending: Awaitable[Any]) -> Any:
    """Await one store command; a Redis failure becomes StoreError naming ``operation``."""
    try:
        return await pending
    except RedisError as exc:
        raise StoreError(f"{operation} failed: {type(exc).__name__}: {exc}") from exc


def _release_args(call: ReleaseCall) -> tuple[EncodableT, ...]:
    if call.units is not None and call.units < 0:
        raise ValueError("units must be >= 0")
    units = -1 if call.units is None else call.units
    return (
        call.lease_id,
        call.outcome.value,
        call.latency_ms,
        call.cooldown_ms,
        call.detail,
        units,
        # The 401/403 judgement's arguments.
        call.request_kind,
        call.refused_by,
        call.granted_at_ms,
        int(call.wait_stated),
        repr(call.seed_rpm),
    )


class Gateway:
    """The scripts of one pool, registered on one store client."""

    def __init__(
        self, redis: Store, keys: PoolKeys, *, listener: TransitionListener | None = None
    ) -> None:
        self.redis = redis
        self.keys = keys
        self._listener = listener
        #: The scripts' one KEY: they derive every other key of the pool from it.
        self._script_keys = (keys.base,)
        self._library = Library(redis)
        #: A lighter call path on a standalone Redis (see broker/lane.py); None: redis-py's.
        self._lane = Lane.of(redis)
        self._send = self._library.send if self._lane is None else self._lane.call

    async def _run(self, operation: str, *args: EncodableT) -> list[Any]:
        """Run one script; log and hand on the transitions it made; its reply without them."""
        command = self._library.command(operation, self._script_keys, args)
        pending = self._library.call(command, self._send)
        return self._settle(await store_call(operation, pending))

    def _settle(self, raw: list[Any]) -> list[Any]:
        *reply, events = raw
        if events:
            transitions = parse(self.keys.name, events)
            emit(transitions)
            if self._listener is not None:
                self._listener(transitions)
        return reply

    async def acquire(
        self,
        *,
        lease_id: str,
        ttl_ms: int,
        seed: int,
        ticket_id: str = "",
        arrival_ms: int = 0,
        ticket_ttl_ms: int = 0,
        precharge: int = 0,
        exclude: Collection[str] = (),
    ) -> Lease | Refused | Ended:
        """acquire.lua: a lease, a refusal, or word that this lease id already ended."""
        reply = await self._run(
            "acquire",
            lease_id,
            ttl_ms,
            seed,
            ticket_id,
            arrival_ms,
            ticket_ttl_ms,
            precharge,
            *exclude,
        )
        if reply[0] == "ok":
            _, session_id, lease_id, expiry, probe, granted = reply
            return Lease(
                self.keys.name,
                session_id,
                lease_id,
                int(expiry),
                probe=bool(probe),
                granted_at_ms=int(granted),
            )
        if reply[0] == "ended":
            return Ended(reply[1])
        _, reason, earliest, now, counts = reply
        return Refused(
            Refusal(reason),
            None if int(earliest) < 0 else int(earliest),
            int(now),
            dict(zip(_COUNTS, map(int, counts), strict=True)),
        )

    async def release(self, call: ReleaseCall) -> Released:
        """release.lua: the lease's end; status ``unknown`` when no such lease is remembered."""
        return self._released(call, await self._run("release", *_release_args(call)))

    async def release_many(self, calls: Sequence[ReleaseCall]) -> list[Released | StoreError]:
        """Several releases, each its own script call, sent together: in one write on a
        standalone Redis, concurrently on other stores. Each one's answer in order, or the
        StoreError its call came to; raises StoreError when the store was not reached at all."""
        commands = [
            self._library.command("release", self._script_keys, _release_args(call))
            for call in calls
        ]
        raws: list[Any]
        if self._lane is not None:
            seen = self._library.loads
            raws = await store_call("release", self._lane.call_many(commands))
            missing = [i for i, raw in enumerate(raws) if is_missing(raw)]
            if missing:
                await store_call("release", self._library.load(seen))
                again = await store_call(
                    "release", self._lane.call_many([commands[i] for i in missing])
                )
                for index, raw in zip(missing, again, strict=True):
                    raws[index] = raw
        else:
            pending = [
                store_call("release", self._library.call(command, self._send))
                for command in commands
            ]
            if len(pending) == 1:
                raws = [await pending[0]]
            else:
                raws = await asyncio.gather(*pending, return_exceptions=True)
        results: list[Released | StoreError] = []
        for call, raw in zip(calls, raws, strict=True):
            if isinstance(raw, StoreError):
                results.append(raw)
            elif isinstance(raw, RedisError):
                results.append(StoreError(f"release failed: {type(raw).__name__}: {raw}"))
            elif isinstance(raw, BaseException):
                raise raw
            else:
                results.append(self._released(call, self._settle(raw)))
        return results

    @staticmethod
    def _released(call: ReleaseCall, reply: list[Any]) -> Released:
        status, session_id, deadline, started = reply
        return Released(
            LeaseStatus(status), session_id, int(deadline), cooldown_started=bool(started)
        )

    async def renew(self, *, lease_id: str, ttl_ms: int) -> int | None:
        """renew.lua: the lease's new expiry (store ms); None when it is no longer live."""
        status, expiry = await self._run("renew", lease_id, ttl_ms)
        return int(expiry) if status == "ok" else None

    async def sync(
        self,
        *,
        step: SyncStep,
        replica: str,
        claim_ttl_ms: int,
        strategy: Strategy,
        breaker_threshold: int,
        breaker_timeout_ms: int,
        breaker_timeout_max_ms: int,
        half_open_probes: int,
        cooldown_max_ms: int,
        breaker_window: int,
        breaker_min_calls: int,
        breaker_failure_ratio: float,
        rate_learning: bool,
        generation: str = "",
        sessions: Sequence[Session] = (),
    ) -> SyncReply:
        """sync.lua: one step of a replica's claim, and the pool-wide settings it writes."""
        values: list[EncodableT] = []
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
        size, status = await self._run(
            "sync",
            strategy.value,
            replica,
            claim_ttl_ms,
            step.value,
            generation,
            breaker_threshold,
            breaker_timeout_ms,
            breaker_timeout_max_ms,
            half_open_probes,
            cooldown_max_ms,
            breaker_window,
            breaker_min_calls,
            repr(breaker_failure_ratio),
            int(rate_learning),
            *values,
        )
        return SyncReply(int(size), status == "lost")

    async def set_disabled(self, *, session_id: str, reason: str) -> SessionState | None:
        """set_disabled.lua (reason ``''`` enables): the new state; None for no such session."""
        (state,) = await self._run("set_disabled", session_id, reason)
        return _state(state)

    async def reset_session(self, *, session_id: str) -> SessionState | None:
        """reset_session.lua: the new state; None for no such session."""
        (state,) = await self._run("reset_session", session_id)
        return _state(state)

    async def set_weight(self, *, session_id: str, weight: float | None) -> SessionState | None:
        """set_weight.lua (None clears the override): the new state; None for no such session."""
        (state,) = await self._run("set_weight", session_id, "" if weight is None else repr(weight))
        return _state(state)

    async def restore(
        self, *, session_id: str, ordinal: int | None, fields: dict[str, str]
    ) -> SessionState | None:
        """restore.lua: a session's exported fields (``session_id`` '' for the pool hash's);
        the session's state after it, None for the pool hash."""
        pairs = [item for pair in sorted(fields.items()) for item in pair]
        (state,) = await self._run(
            "restore", session_id, "" if ordinal is None else ordinal, *pairs
        )
        return _state(state) if session_id else None

    async def leave_queue(self, *, ticket_id: str) -> bool:
        """leave_queue.lua: whether the ticket was queued (the next in line is then woken)."""
        (queued,) = await self._run("leave_queue", ticket_id)
        return bool(int(queued))

    async def alerts(
        self,
        *,
        attempts: int,
        errors: int,
        bucket_ms: int,
        window_ms: int,
        error_rate: float,
        min_attempts: int,
        set_limit: int,
    ) -> list[AlertChange]:
        """alerts.lua: the alerts that started or ended with this check."""
        (changes,) = await self._run(
            "alerts", attempts, errors, bucket_ms, window_ms, error_rate, min_attempts, set_limit
        )
        return [
            AlertChange(str(name), str(status), int(since), str(detail))
            for name, status, since, detail in changes
        ]

    async def summary_turn(
        self, *, requests: int, interval_ms: int, every_requests: int, min_gap_ms: int
    ) -> SummaryTurn:
        """summary_turn.lua: whether this replica logs the health summary now."""
        turn, now = await self._run(
            "summary_turn", requests, interval_ms, every_requests, min_gap_ms
        )
        return SummaryTurn(bool(int(turn)), int(now))

    async def housekeeping(self) -> None:
        """housekeeping.lua: due cooldowns, quotas, breakers and lease expiries take effect."""
        await self._run("housekeeping")

    async def units(self, *, session_ids: Sequence[str], at_ms: int = 0) -> UnitsLeft:
        """units.lua (read only): what each session's unit budget has left at ``at_ms`` (store
        ms, as read with TIME; 0: the store's now)."""
        now, left = await self._run("units", at_ms, *session_ids)
        return UnitsLeft(
            int(now),
            {sid: (None if n < 0 else int(n)) for sid, n in zip(session_ids, left, strict=True)},
        )


def _state(raw: str) -> SessionState | None:
    return None if raw in ("unknown", "") else SessionState(raw)
