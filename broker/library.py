"""The scripts as a Redis function library on a store: calling an operation, and loading the
library where a server lacks it.

Every operation is one ``FCALL`` of a function of the library ``broker/preamble.py`` generates.
Redis answers "Function not found" where the library is missing: a server restarted without
persistence, a flushed one (``FUNCTION FLUSH``), a Cluster node that has not seen it, a promoted
replica whose master never sent it. The library is then loaded (``FUNCTION LOAD REPLACE``: on a
Cluster, redis-py sends it to every primary) and the call made again, once. Loading is the same
whatever the call path (broker/lane.py on a standalone Redis, redis-py's commands elsewhere), and
one load at a time per gateway: a burst of calls that all met a fresh server loads it once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from redis.exceptions import ResponseError
from redis.typing import EncodableT

from broker.preamble import function_name, library, library_name
from broker.store import Store

__all__ = ["Library", "Send", "is_missing"]

#: Sends one command and returns its reply (raises an error reply as ResponseError).
Send = Callable[[tuple[Any, ...]], Awaitable[Any]]

#: What Redis answers an FCALL of a function it does not have (its message starts with it).
MISSING = "Function not found"


def is_missing(error: BaseException) -> bool:
    """Whether ``error`` is a server saying it lacks the function called."""
    return isinstance(error, ResponseError) and str(error).startswith(MISSING)


class Library:
    """The library on one store client: the FCALL of each operation, and its loading."""

    def __init__(self, redis: Store) -> None:
        self.redis = redis
        self.name = library_name()
        self.code = library()
        self._lock = asyncio.Lock()
        #: Loads made so far; a call that met a missing function before the last load was made
        #: retries without loading again.
        self.loads = 0

    @staticmethod
    def command(operation: str, keys: Sequence[str], args: Sequence[EncodableT]) -> tuple[Any, ...]:
        """The FCALL of ``operation``, ready to send."""
        return ("FCALL", function_name(operation), len(keys), *keys, *args)

    async def load(self, seen: int) -> None:
        """Load the library unless a load was made since the caller's call failed (``seen``:
        ``loads`` when it was sent)."""
        async with self._lock:
            if self.loads == seen:
                await self.redis.function_load(self.code, replace=True)
                self.loads += 1

    async def call(self, command: tuple[Any, ...], send: Send) -> Any:
        """``command`` (an FCALL) sent with ``send``; loaded and sent again if it was missing."""
        seen = self.loads
        try:
            return await send(command)
        except ResponseError as exc:
            if not is_missing(exc):
                raise
        await self.load(seen)
        return await send(command)

    async def send(self, command: tuple[Any, ...]) -> Any:
        """Send ``command`` through redis-py (Sentinel, Cluster, the embedded store)."""
        return await self.redis.execute_command(*command)
