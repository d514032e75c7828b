"""The ``status`` table: one row per session, as an operator reads it in a terminal.

Columns: id, state, cooldown left, breaker, in-flight, success rate, latency (moving average of
successful attempts, as the store keeps it), last error and how long ago. Times are relative to
the store's clock (``now_ms``), not this machine's.
"""

from __future__ import annotations

from collections.abc import Sequence

from broker.admin import PoolSummary, SessionView

__all__ = ["ago", "duration", "render_status", "render_summary"]

COLUMNS = ("SESSION", "STATE", "COOLDOWN", "BREAKER", "IN-FLIGHT", "SUCCESS", "LATENCY",
           "LAST ERROR", "WHEN")  # fmt: skip


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


def _row(v: SessionView, now_ms: int) -> tuple[str, ...]:
    state = v.state
    if v.disabled_reason and v.state == "disabled":
        state = f"disabled ({v.disabled_reason})"
    cooldown = duration(v.cooldown_until_ms - now_ms) if v.cooldown_until_ms > now_ms else "-"
    breaker = v.breaker.replace("_", "-")
    if v.breaker == "open" and v.breaker_until_ms > now_ms:
        breaker = f"open {duration(v.breaker_until_ms - now_ms)}"
    in_flight = str(v.in_flight) + (f"/{v.max_concurrency}" if v.max_concurrency else "")
    latency = "-" if v.latency_ms is None else f"{v.latency_ms}ms"
    return (
        v.id,
        state,
        cooldown,
        breaker,
        in_flight,
        f"{v.success_rate * 100:.1f}%",
        latency,
        v.last_error or "-",
        ago(v.last_error_at_ms, now_ms),
    )


def render_summary(summary: PoolSummary) -> str:
    counts = summary.sessions
    shown = [
        f"{n} {state.replace('_', '-')}" for state, n in counts.items() if n and state != "total"
    ]
    alerts = ", ".join(summary.alerts) or "none"
    return (
        f"pool {summary.pool} ({summary.strategy or '?'}): {counts.get('total', 0)} sessions"
        f" [{', '.join(shown) or 'none'}]; {summary.leases} leases live; alerts: {alerts}"
    )


def render_status(summary: PoolSummary, sessions: Sequence[SessionView]) -> str:
    """The summary line, then the table, aligned for a terminal."""
    rows = [COLUMNS, *(_row(v, summary.now_ms) for v in sessions)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
             for row in rows]  # fmt: skip
    return "\n".join([render_summary(summary), "", *lines])
