"""A request body streamed to the upstream as it arrives, and kept so a retry can send it again.

A body with a Content-Length (checked against MAX_BODY_BYTES before anything is sent) streams
through as it arrives. A chunked body of unknown length is read first, bounded, so one that is too
large gets its 413 before any of it reaches the upstream: a body cut short on the way would reach
the upstream as a complete, wrong request.

A client has BODY_TIMEOUT seconds from its request's arrival to send the whole body; past that
deadline reading fails with ``BodyTimeout`` (408), so a client that sends its headers and stalls
holds a lease and an upstream connection no longer than that.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from aiohttp import StreamReader

#: Largest body sent as one piece of bytes with the request's headers; a larger one streams from
#: the kept chunks (aiohttp warns that one large write may hold up the event loop).
SEND_WHOLE_MAX = 64 * 1024


class BodyTooLarge(Exception):
    """The client sent more than MAX_BODY_BYTES."""


class BodyTimeout(Exception):
    """The client did not send its whole body within BODY_TIMEOUT."""


class ReplayableBody:
    """Reads the client's body chunk by chunk, at most ``limit`` bytes in all, all of it by
    ``deadline`` (the event loop's clock).

    Each call of ``stream()`` yields the whole body from the start: first what earlier attempts
    already read, then the rest as the client sends it. Memory is bounded by ``limit``.
    """

    def __init__(self, content: StreamReader, limit: int, deadline: float) -> None:
        self._content = content
        self._limit = limit
        self._deadline = deadline
        self._chunks: list[bytes] = []
        self._size = 0
        #: Why reading failed, if it did: the HTTP client sending the body upstream hides the
        #: error its body raised behind one of its own.
        self.failure: BodyTooLarge | BodyTimeout | None = None

    async def read_all(self) -> None:
        """Read the whole body now; raises BodyTooLarge past the limit."""
        async for _ in self.stream():
            pass

    async def read_bytes(self) -> bytes:
        """The whole body (read now if need be); raises BodyTooLarge past the limit."""
        await self.read_all()
        return b"".join(self._chunks)

    def payload(self) -> bytes | AsyncIterator[bytes]:
        """What to send: a small body that has all arrived already (as one usually has, with its
        headers) as bytes, which leave with the request's headers in one write; else
        ``stream()``."""
        if not self._content.is_eof() or self._content.exception() is not None:
            return self.stream()
        rest = self._content.read_nowait()
        if rest:
            self._add(rest)
        if self._size > SEND_WHOLE_MAX:
            return self.stream()
        if len(self._chunks) > 1:
            self._chunks = [b"".join(self._chunks)]
        return self._chunks[0] if self._chunks else b""

    async def stream(self) -> AsyncIterator[bytes]:
        index = 0
        while True:
            if index < len(self._chunks):
                yield self._chunks[index]
                index += 1
                continue
            chunk = await self._next_chunk()
            if not chunk:
                return
            self._add(chunk)

    async def _next_chunk(self) -> bytes:
        try:
            async with asyncio.timeout_at(self._deadline):
                return await self._content.readany()
        except TimeoutError as exc:
            self.failure = BodyTimeout("the request body did not arrive within BODY_TIMEOUT")
            raise self.failure from exc

    def _add(self, chunk: bytes) -> None:
        self._size += len(chunk)
        if self._size > self._limit:
            self.failure = BodyTooLarge(f"request body over {self._limit} bytes")
            raise self.failure
        self._chunks.append(chunk)
