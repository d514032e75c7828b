"""Transitions of sessions, as the scripts report them, logged once for the whole fleet.

Each script returns the transitions it made (a session's state, or its circuit breaker), and only
the replica whose call made a transition sees it: so each is logged exactly once, with the session
id and the reason, however many replicas there are.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

import structlog

from broker.states import BreakerState, SessionState

log = structlog.get_logger("broker.events")

#: Transitions that happen on every lease of a session with a concurrency limit: debug only.
_ROUTINE = frozenset({SessionState.AVAILABLE, SessionState.BUSY, SessionState.PROBING})
#: Moves among these (and a first state) are debug lines: they come and go with the traffic.
_QUIET = _ROUTINE | {SessionState.QUOTA}
#: States a session recovers from (worth an info line when it leaves them).
_SETBACKS = frozenset({SessionState.COOLING, SessionState.OPEN, SessionState.DISABLED})
#: The operator's action under way in this task ('disabled', 'drained', 'enabled'), so that the
#: transition it makes is told as what it is: a drain is no credential's failure.
_OPERATOR_ACTION: ContextVar[str | None] = ContextVar("operator_action", default=None)


@contextmanager
def operator_action(done: str) -> Iterator[None]:
    """Transitions made inside are logged as ``session <done> by an operator``."""
    token = _OPERATOR_ACTION.set(done)
    try:
        yield
    finally:
        _OPERATOR_ACTION.reset(token)


@dataclass(frozen=True, slots=True)
class Transition:
    """Session ``session_id``'s ``kind`` ('state' or 'breaker') went from ``old`` to ``new``
    (a SessionState's or a BreakerState's value; ``old`` is '' for a session's first state)."""

    pool: str
    session_id: str
    kind: str
    old: str
    new: str


def parse(pool: str, raw: Iterable[Sequence[str]]) -> list[Transition]:
    return [Transition(pool, *event) for event in raw]


def emit(transitions: Iterable[Transition]) -> None:
    """Log each transition at a level that matches what an operator must know."""
    action = _OPERATOR_ACTION.get()
    for t in transitions:
        fields = {"pool": t.pool, "session": t.session_id, "from_state": t.old or None}
        if action is not None and t.kind == "state":
            log.info(f"session {action} by an operator", **fields, to_state=t.new)
        elif t.kind == "breaker":
            level = log.warning if t.new == BreakerState.OPEN else log.info
            level(f"circuit breaker {t.new.replace('_', '-')}", **fields)
        elif t.new == SessionState.DISABLED:
            log.warning("session disabled", **fields)
        elif t.new == SessionState.COOLING:
            log.info("session cooling down", **fields)
        elif t.new == SessionState.QUOTA:
            log.debug("session out of rpm quota", **fields)
        elif t.old in _SETBACKS and t.new in _ROUTINE:
            log.info("session recovered", **fields, to_state=t.new)
        elif t.old == "" or (t.old in _QUIET and t.new in _QUIET):
            log.debug("session state", **fields, to_state=t.new)
        else:
            log.info("session state", **fields, to_state=t.new)
