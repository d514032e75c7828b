"""A request body streamed to the upstream as it arrives, and kept so a retry can send it again.

A body with a Content-Length (checked against MAX_BODY_BYTES before anything is sent) streams
through as it arrives. A chunked body of unknown length is read first, bounded, so one that is too
large gets its 413 before any of it reaches the upstream: a body cut short on the way would reach
the upstream as a complete, wrong request.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import StreamReader


class BodyTooLarge(Exception):
    """The client sent more than MAX_BODY_BYTES."""


class ReplayableBody:
    """Reads the client's body chunk by chunk, at most ``limit`` bytes in all.

    Each call of ``stream()`` yields the whole body from the start: first what earlier attempts
    already read, then the rest as the client sends it. Memory is bounded by ``limit``.
    """

    def __init__(self, content: StreamReader, limit: int) -> None:
        self._content = content
        self._limit = limit
        self._chunks: list[bytes] = []
        self._size = 0

    async def read_all(self) -> None:
        """Read the whole body now; raises BodyTooLarge past the limit."""
        async for _ in self.stream():
            pass

    async def read_bytes(self) -> bytes:
        """The whole body (read now if need be); raises BodyTooLarge past the limit."""
        await self.read_all()
        return b"".join(self._chunks)

    async def stream(self) -> AsyncIterator[bytes]:
        index = 0
        while True:
            if index < len(self._chunks):
                yield self._chunks[index]
                index += 1
                continue
            chunk = await self._content.readany()
            if not chunk:
                return
            self._size += len(chunk)
            if self._size > self._limit:
                raise BodyTooLarge(f"request body over {self._limit} bytes")
            self._chunks.append(chunk)
