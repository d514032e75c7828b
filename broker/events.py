"""Transitions of sessions, as the scripts report them, logged once for the whole fleet.

Each script returns the transitions it made (a session's state, or its circuit breaker), and only
the replica whose call made a transition sees it: so each is logged exactly once, with the session
id and the reason, however many replicas there are.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import structlog

log = structlog.get_logger("broker.events")

#: Transitions that happen on every lease of a session with a concurrency limit: debug only.
_ROUTINE = frozenset({"available", "busy", "probing"})


@dataclass(frozen=True, slots=True)
class Transition:
    """Session ``session_id``'s ``kind`` ('state' or 'breaker') went from ``old`` to ``new``."""

    pool: str
    session_id: str
    kind: str
    old: str
    new: str


def parse(pool: str, raw: Iterable[Sequence[str]]) -> list[Transition]:
    return [Transition(pool, *event) for event in raw]


def emit(transitions: Iterable[Transition]) -> None:
    """Log each transition at a level that matches what an operator must know."""
    for t in transitions:
        fields = {"pool": t.pool, "session": t.session_id, "from_state": t.old or None}
        if t.kind == "breaker":
            level = log.warning if t.new == "open" else log.info
            level(f"circuit breaker {t.new.replace('_', '-')}", **fields)
        elif t.new == "disabled":
            log.warning("session disabled", **fields)
        elif t.new == "cooling":
            log.info("session cooling down", **fields)
        elif t.new == "quota":
            log.debug("session out of rpm quota", **fields)
        elif t.old in ("cooling", "open", "disabled") and t.new in _ROUTINE:
            log.info("session recovered", **fields, to_state=t.new)
        elif t.old == "" or (t.old in _ROUTINE | {"quota"} and t.new in _ROUTINE | {"quota"}):
            log.debug("session state", **fields, to_state=t.new)
        else:
            log.info("session state", **fields, to_state=t.new)
