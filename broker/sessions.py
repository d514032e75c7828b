"""Sessions: the upstream credentials of a pool, as configured on each replica.

A session's secret never leaves the replica: Redis holds only its id and state. Sessions come
from a comma-separated list of secrets (``SESSIONS``) or a JSON or TOML file (``SESSIONS_FILE``)::

    {"sessions": [{"id": "a", "secret": "...", "weight": 2, "max_concurrency": 1, "rpm": 60,
                   "priority": 1, "tpm": 90000}]}

``priority`` (default 0) puts a session in a tier: higher tiers are preferred, and a lower one
serves only while every session above it is unavailable. ``tpm`` is a budget of units (tokens)
per minute, charged by what releases report.
"""

from __future__ import annotations

import hashlib
import json
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any

import msgspec

from broker.errors import ConfigError

__all__ = ["Session", "load_sessions", "session_id_for"]

_ID = r"^[A-Za-z0-9._-]{1,64}$"
#: Fields of the predecessor's sessions.json that held per-process health; accepted and ignored
#: (health now lives in the store).
_PREDECESSOR_STATE = ("total_requests", "success_count", "error_count", "last_used")


class Session(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One credential. ``id`` is stable and not secret; ``secret`` never leaves this process."""

    id: Annotated[str, msgspec.Meta(pattern=_ID)]
    secret: Annotated[str, msgspec.Meta(min_length=1)]
    weight: Annotated[float, msgspec.Meta(gt=0, le=1_000_000)] = 1.0
    max_concurrency: Annotated[int, msgspec.Meta(ge=1)] | None = None
    rpm: Annotated[float, msgspec.Meta(gt=0)] | None = None
    burst: Annotated[int, msgspec.Meta(ge=1)] = 1
    enabled: bool = True
    #: The session's tier: an acquire takes a lower tier only when no higher one has a session.
    priority: Annotated[int, msgspec.Meta(ge=-1_000_000, le=1_000_000)] = 0
    #: Units (typically tokens) per minute; None: no unit budget.
    tpm: Annotated[int, msgspec.Meta(gt=0)] | None = None

    def __repr__(self) -> str:
        return f"Session(id={self.id!r}, secret='***', weight={self.weight})"

    __str__ = __repr__

    def __rich_repr__(self) -> list[tuple[str, Any]]:
        # msgspec's own rich repr would list every field, the secret included.
        return [("id", self.id), ("weight", self.weight)]


class _File(msgspec.Struct, forbid_unknown_fields=True):
    sessions: list[Session]


def session_id_for(secret: str) -> str:
    """A stable id for a secret given without one: a short hash, which does not reveal it."""
    return "s-" + hashlib.sha256(secret.encode()).hexdigest()[:12]


def _normalise(entry: Any) -> Any:
    if not isinstance(entry, dict):
        return entry
    entry = {k: v for k, v in entry.items() if k not in _PREDECESSOR_STATE}
    if "session_key" in entry and "secret" not in entry:
        entry["secret"] = entry.pop("session_key")
    if "id" not in entry and isinstance(entry.get("secret"), str) and entry["secret"]:
        entry["id"] = session_id_for(entry["secret"])
    return entry


def _check_unique(sessions: Sequence[Session], origin: str) -> list[Session]:
    seen: set[str] = set()
    for session in sessions:
        if session.id in seen:
            raise ConfigError(
                f"{origin}: session id {session.id!r} appears twice; ids must be unique"
            )
        seen.add(session.id)
    if not sessions:
        raise ConfigError(f"{origin}: no sessions; give at least one")
    return list(sessions)


def parse_secrets(value: str) -> list[Session]:
    """Sessions from the predecessor's comma-separated list of secrets."""
    secrets = [part.strip() for part in value.split(",") if part.strip()]
    return _check_unique([Session(id=session_id_for(s), secret=s) for s in secrets], "SESSIONS")


def read_file(path: Path) -> Any:
    """The parsed content of a sessions file: JSON, or TOML when the name ends in ``.toml``."""
    origin = f"SESSIONS_FILE {path}"
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{origin}: cannot read it ({exc.strerror})") from exc
    try:
        return tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except (ValueError, tomllib.TOMLDecodeError) as exc:
        kind = "TOML" if path.suffix == ".toml" else "JSON"
        raise ConfigError(f"{origin}: not valid {kind}: {exc}") from exc


def sessions_from(raw: Any, origin: str) -> list[Session]:
    """Sessions from a file's ``{"sessions": [...]}`` document (or a pool's entry)."""
    if isinstance(raw, dict) and isinstance(raw.get("sessions"), list):
        raw = {**raw, "sessions": [_normalise(entry) for entry in raw["sessions"]]}
    try:
        parsed = msgspec.convert(raw, _File)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"{origin}: {exc}") from exc
    return _check_unique(parsed.sessions, origin)


def parse_file(path: Path) -> list[Session]:
    """Sessions from a JSON or TOML file (TOML when the name ends in ``.toml``)."""
    return sessions_from(read_file(path), f"SESSIONS_FILE {path}")


def load_sessions(*, secrets: str | None, path: Path | None) -> list[Session]:
    """The configured sessions: from ``path`` if given, else from ``secrets``."""
    if path is not None and secrets:
        raise ConfigError("SESSIONS and SESSIONS_FILE are both set; give one of them")
    if path is not None:
        return parse_file(path)
    if secrets:
        return parse_secrets(secrets)
    raise ConfigError(
        "no sessions configured: set SESSIONS (comma-separated secrets) "
        "or SESSIONS_FILE (a JSON or TOML file)"
    )
