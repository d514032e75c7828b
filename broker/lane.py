"""A light call path for the pool's scripts on a standalone Redis.

redis-py's general path costs a replica more CPU per script call than the script costs Redis: for
every command it checks a connection out of its pool (a lock, a condition, a timeout, a read to
see that the connection holds no stray data) and back in, runs the send in a task of its own for
the send timeout, records observability hooks and encodes each argument in Python. A lane keeps
the connections it has used (up to ``IDLE_MAX``, taken from the store's own pool, which still
bounds their number and closes them with the client), packs a command with hiredis and puts one
timeout around each send and read.

What stays redis-py's: the connections themselves (connect, AUTH, SELECT, TLS, RESP parsing,
health checks of idle connections), the retries after a dropped connection (the store's
``Retry``; every script is idempotent by its client-made lease id, so a resend is safe), and the
errors raised. A lane only sends and reads: "Function not found" (a restarted or failed-over
server) reaches the gateway, which loads the library and calls again (``broker/library.py``), as
on every other path. Sentinel, Cluster and the embedded store call through redis-py.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

import hiredis
from redis.asyncio import BlockingConnectionPool, ConnectionPool, Redis
from redis.asyncio.connection import AbstractConnection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

__all__ = ["IDLE_MAX", "Lane"]

#: Connections a lane keeps between calls; more concurrent calls borrow from the store's pool
#: and give back what exceeds this (so a burst does not hold the pool's connections forever).
IDLE_MAX = 64

#: hiredis's packer (the same bytes as redis-py's, about five times faster); its stub types the
#: argument as a one-element tuple.
_pack: Callable[[tuple[object, ...]], bytes] = hiredis.pack_command  # type: ignore[assignment]


class Lane:
    """Script calls (FCALL) on a standalone Redis over connections kept between calls."""

    def __init__(self, pool: ConnectionPool) -> None:
        self._pool = pool
        self._idle: list[AbstractConnection] = []
        options = pool.connection_kwargs
        #: The client's socket timeout, applied once around each send and read.
        self._timeout_s: float | None = options.get("socket_timeout")
        retry = options.get("retry")
        self._retry = retry if isinstance(retry, Retry) else Retry(NoBackoff(), 0)

    @classmethod
    def of(cls, store: object) -> Lane | None:
        """A lane for a standalone client; None for any other kind (they call through redis-py)."""
        if type(store) is not Redis:  # Sentinel's and the embedded store's are subclasses
            return None
        pool = store.connection_pool
        if type(pool) not in (ConnectionPool, BlockingConnectionPool):
            return None
        return cls(pool)

    async def call(self, command: tuple[Any, ...]) -> Any:
        """Send ``command`` (a script call) and return its reply; retried on a dropped
        connection. An error reply is raised as redis-py's ResponseError."""
        packed = _pack(command)
        conn = self._idle.pop() if self._idle else await self._borrow()
        try:
            return await self._retry.call_with_retry(
                lambda: self._once(conn, packed), lambda _: conn.disconnect()
            )
        except ResponseError:
            raise  # the server answered (a script error): the connection is in step
        except BaseException:
            # Failed or cancelled mid-call: a reply may still be on its way, so this connection
            # is dropped; the next call on it connects afresh.
            await conn.disconnect(nowait=True)
            raise
        finally:
            await self._give_back(conn)

    async def call_many(self, commands: Sequence[tuple[Any, ...]]) -> list[Any]:
        """Send ``commands`` in one write on one connection; the replies in order, an error
        reply as its ResponseError (returned, not raised). Retried as a whole on a dropped
        connection: every script is idempotent by its lease id."""
        packed = [_pack(command) for command in commands]
        conn = self._idle.pop() if self._idle else await self._borrow()
        try:
            return await self._retry.call_with_retry(
                lambda: self._many(conn, packed), lambda _: conn.disconnect()
            )
        except BaseException:
            await conn.disconnect(nowait=True)
            raise
        finally:
            await self._give_back(conn)

    async def _many(self, conn: AbstractConnection, commands: list[bytes]) -> list[Any]:
        try:
            async with asyncio.timeout(self._timeout_s):
                await conn.send_packed_command(b"".join(commands))
                replies: list[Any] = []
                for _ in commands:
                    try:
                        replies.append(await conn.read_response())
                    except ResponseError as exc:
                        replies.append(exc)
                return replies
        except TimeoutError as exc:
            await conn.disconnect(nowait=True)
            raise RedisTimeoutError("Timeout talking to Redis") from exc

    async def _once(self, conn: AbstractConnection, command: bytes) -> Any:
        try:
            async with asyncio.timeout(self._timeout_s):
                await conn.send_packed_command(command)
                return await conn.read_response()
        except TimeoutError as exc:
            await conn.disconnect(nowait=True)
            raise RedisTimeoutError("Timeout talking to Redis") from exc

    async def _borrow(self) -> AbstractConnection:
        # redis-py leaves get_connection unannotated (a deprecation decorator).
        conn: AbstractConnection = await self._pool.get_connection()  # type: ignore[no-untyped-call]
        conn.socket_timeout = None  # the lane's one timeout covers send and read
        return conn

    async def _give_back(self, conn: AbstractConnection) -> None:
        if len(self._idle) < IDLE_MAX:
            self._idle.append(conn)
            return
        conn.socket_timeout = self._timeout_s
        await self._pool.release(conn)
