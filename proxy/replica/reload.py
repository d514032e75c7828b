"""Reading SESSIONS_FILE again: a changed, valid file gives the pools to serve from now on.

It compares content, not modification times: Kubernetes updates a mounted Secret by swapping a
symlink, which leaves the file's own mtime meaningless. An unreadable or invalid file is logged
and ignored, so a half-written edit never takes a replica down. What changed is logged by
session id (added, removed, rotated), never with a secret.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import structlog

from broker import ConfigError
from proxy.config.pools import PoolTable, load_pools
from proxy.config.settings import Settings

__all__ = ["SessionsFile"]

log = structlog.get_logger(__name__)


class SessionsFile:
    """SESSIONS_FILE, as last read."""

    def __init__(self, settings: Settings, path: Path) -> None:
        self._settings = settings
        self._path = path
        #: Digest of the file's content as last read (loaded or rejected).
        self._digest: str | None = None

    def changed(self, serving: PoolTable, *, force: bool) -> PoolTable | None:
        """The file's pools when they differ from ``serving`` (read even if the content is as
        last read, with ``force``); None when they do not, or the file is unusable."""
        try:
            digest = hashlib.sha256(self._path.read_bytes()).hexdigest()
        except OSError as exc:
            log.warning("sessions file unreadable; keeping the sessions in use", error=exc.strerror)
            return None
        if digest == self._digest and not force:
            return None
        self._digest = digest
        try:
            table = load_pools(self._settings)
        except ConfigError as exc:
            log.warning("sessions file rejected; keeping the sessions in use", error=str(exc))
            return None
        if table == serving:
            return None
        _log_changes(serving, table)
        return table


def _log_changes(old_table: PoolTable, table: PoolTable) -> None:
    before = old_table.pools
    for name, plan in table.pools.items():
        old = before[name].secrets if name in before else {}
        new = plan.secrets
        if old != new:
            log.info(
                "sessions file changed",
                pool=name,
                added=sorted(new.keys() - old.keys()),
                removed=sorted(old.keys() - new.keys()),
                rotated=sorted(i for i in new.keys() & old.keys() if new[i] != old[i]),
            )
    dropped = sorted(before.keys() - table.pools.keys())
    if dropped:
        log.info("pools no longer served", pools=dropped)
