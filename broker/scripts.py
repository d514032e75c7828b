"""The Lua scripts, loaded once from package data and called with EVALSHA.

Each script file in ``lua/`` is one atomic operation on a pool; ``common.lua`` is a prelude put in
front of each of them (key layout, eligibility, housekeeping). redis-py's ``Script`` sends EVALSHA
and, on NOSCRIPT (a restarted or failed-over server), loads the script and sends it again. On a
standalone Redis the pool calls them through ``broker/lane.py``, which does the same.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path

from redis.commands.core import AsyncScript

from broker.store import Store

PRELUDE = "common.lua"
OPERATIONS = (
    "acquire",
    "release",
    "renew",
    "sync",
    "set_disabled",
    "leave_queue",
    # Operating a pool: broker/admin.py, broker/snapshot.py, broker/alerts.py.
    "reset_session",
    "set_weight",
    "restore",
    "alerts",
    "summary_turn",
    "housekeeping",
)


def _lua_dir() -> Traversable:
    packaged = resources.files("broker").joinpath("lua")
    if packaged.is_dir():
        return packaged
    # A source checkout or an editable install: the folder sits at the top of the repository.
    return Path(__file__).resolve().parent.parent / "lua"


@cache
def source(operation: str) -> str:
    """The full text sent to Redis for ``operation``: the prelude, then the script."""
    folder = _lua_dir()
    prelude = folder.joinpath(PRELUDE).read_text(encoding="utf-8")
    body = folder.joinpath(f"{operation}.lua").read_text(encoding="utf-8")
    return f"{prelude}\n{body}"


@dataclass(frozen=True, slots=True)
class Scripts:
    """The registered scripts of one Redis client."""

    acquire: AsyncScript
    release: AsyncScript
    renew: AsyncScript
    sync: AsyncScript
    set_disabled: AsyncScript
    leave_queue: AsyncScript
    reset_session: AsyncScript
    set_weight: AsyncScript
    restore: AsyncScript
    alerts: AsyncScript
    summary_turn: AsyncScript
    housekeeping: AsyncScript

    @classmethod
    def register(cls, redis: Store) -> Scripts:
        return cls(*(redis.register_script(source(name)) for name in OPERATIONS))
