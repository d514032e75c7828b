"""The ``status`` table: one row per session, as an operator reads it in a terminal.

Columns: id, state, tier (only when the pool has more than one), cooldown left, breaker,
in-flight, unit budget (only when some session has a tpm: units available now / tpm), success
rate, latency (moving average of successful attempts, as the store keeps it), last error and how
long ago. Times are relative to the store's clock (``now_ms``), not this machine's. Above the
table: the pool's counts, then a line per tier and the unit budgets added up, when they apply.
"""

from __future__ import annotations

from collections.abc import Sequence

from broker.admin import PoolSummary, SessionView
from broker.registry import PoolEntry
from broker.states import BreakerState, SessionState

__all__ = ["ago", "duration", "render_status", "render_summary"]

COLUMNS = ("SESSION", "STATE", "COOLDOWN", "BREAKER", "IN-FLIGHT", "SUCCESS", "LATENCY",
           "LAST ERROR", "WHEN")  # fmt: skip
#: Optional columns, and the column each one follows.
TIER_AFTER, UNITS_AFTER, RATE_AFTER = "STATE", "IN-FLIGHT", "IN-FLIGHT"


def duration(ms: int) -> str:
    """A short human duration: 850ms, 42s, 3m05s, 2h10m, 3d4h."""
    if ms < 1000:
        return f"{ms}ms"
    seconds = ms // 1000
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours}h{minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d{hours}h"


def ago(ms: int | None, now_ms: int) -> str:
    return "-" if not ms else f"{duration(max(0, now_ms - ms))} ago"


def budget(available: int | None, tpm: int | None) -> str:
    """A unit budget as ``41,200/90,000 tpm``: units available now, of units per minute."""
    return "-" if tpm is None or available is None else f"{available:,}/{tpm:,} tpm"


def _row(v: SessionView, now_ms: int) -> dict[str, str]:
    state = v.state
    if v.disabled_reason and v.state == SessionState.DISABLED:
        state = f"disabled ({v.disabled_reason})"
    cooldown = duration(v.cooldown_until_ms - now_ms) if v.cooldown_until_ms > now_ms else "-"
    breaker = v.breaker.replace("_", "-")
    if v.breaker == BreakerState.OPEN and v.breaker_until_ms > now_ms:
        breaker = f"open {duration(v.breaker_until_ms - now_ms)}"
    in_flight = str(v.in_flight) + (f"/{v.max_concurrency}" if v.max_concurrency else "")
    latency = "-" if v.latency_ms is None else f"{v.latency_ms}ms"
    return {
        "SESSION": v.id,
        "STATE": state,
        "TIER": str(v.priority),
        "COOLDOWN": cooldown,
        "BREAKER": breaker,
        "IN-FLIGHT": in_flight,
        "UNITS": budget(v.units_available, v.tpm),
        "RATE": "-" if v.rate_rpm is None else f"{v.rate_rpm:g}/min {v.rate_source or '?'}",
        "SUCCESS": f"{v.success_rate * 100:.1f}%",
        "LATENCY": latency,
        "LAST ERROR": v.last_error or "-",
        "WHEN": ago(v.last_error_at_ms, now_ms),
    }


def _tier(priority: int, sessions: int | None, available: int) -> str:
    of = "" if sessions is None else f"/{sessions}"
    return f"tier {priority}: {available}{of} available"


def render_summary(summary: PoolSummary) -> str:
    """The pool's line; then, in a pool of several tiers, a line of tiers (best first); when
    some session has a tpm, the unit budgets added up; when some session is paced, its
    sessions by the source of their rate."""
    counts = summary.sessions
    shown = [
        f"{n} {state.replace('_', '-')}" for state, n in counts.items() if n and state != "total"
    ]
    alerts = ", ".join(summary.alerts) or "none"
    lines = [
        f"pool {summary.pool} ({summary.strategy or '?'}): {counts.get('total', 0)} sessions"
        f" [{', '.join(shown) or 'none'}]; {summary.leases} leases live; alerts: {alerts}"
    ]
    if len(summary.tiers) > 1:
        lines.append("; ".join(_tier(t.priority, t.sessions, t.available) for t in summary.tiers))
    if summary.units is not None:
        units = summary.units
        of = "session" if units.sessions == 1 else "sessions"
        lines.append(f"units {budget(units.available, units.tpm)} ({units.sessions} {of})")
    if any(source != "none" for source in summary.rate_sources):
        rates = ", ".join(f"{n} {source}" for source, n in summary.rate_sources.items())
        lines.append(f"rates: {rates}")
    if len(lines) > 1 and summary.sessions_read < counts.get("total", 0):
        lines.append(f"(tiers and units of the first {summary.sessions_read} sessions)")
    return "\n".join(lines)


def render_route(name: str, entry: PoolEntry) -> str:
    """How requests reach pool ``name`` and what it falls back to, as the fleet recorded it."""
    ways = []
    if entry.default:
        ways.append("the default")
    if entry.path_prefix:
        ways.append(f"path {entry.path_prefix}/...")
    if entry.models:
        ways.append("models " + ", ".join(entry.models))
    reached = "; ".join(ways) or "by name only"
    fallback = f"; falls back to {entry.fallback}" if entry.fallback else ""
    return f"== pool {name}: {reached}{fallback}"


def render_status(summary: PoolSummary, sessions: Sequence[SessionView]) -> str:
    """The summary lines, then the table, aligned for a terminal. The TIER column shows only
    when the pool has more than one tier, UNITS only when some session has a tpm, RATE only
    when some session is paced."""
    columns = list(COLUMNS)
    if len(summary.tiers) > 1:
        columns.insert(columns.index(TIER_AFTER) + 1, "TIER")
    if any(v.tpm is not None for v in sessions):
        columns.insert(columns.index(UNITS_AFTER) + 1, "UNITS")
    if any(v.rate_rpm is not None for v in sessions):
        columns.insert(columns.index(RATE_AFTER) + 1, "RATE")
    cells = [_row(v, summary.now_ms) for v in sessions]
    rows = [columns, *([row[c] for c in columns] for row in cells)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(columns))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
             for row in rows]  # fmt: skip
    return "\n".join([render_summary(summary), "", *lines])
