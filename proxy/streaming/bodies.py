"""Helpers over request bodies seen as async iterators of bytes."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator

from proxy.streaming.part_buffer import PartBuffer


class BodyTooLarge(Exception):
    def __init__(self, limit: int) -> None:
        super().__init__(f"the body is larger than the limit of {limit} bytes")
        self.limit = limit


async def limited(body: AsyncIterator[bytes], limit: int) -> AsyncIterator[bytes]:
    """Pass ``body`` through, raising BodyTooLarge once it exceeds ``limit`` bytes."""
    seen = 0
    async for chunk in body:
        seen += len(chunk)
        if seen > limit:
            raise BodyTooLarge(limit)
        yield chunk


class HashingReader:
    """Reads a body in pieces of a requested size while hashing it with SHA-256.

    Hashing happens chunk by chunk as bytes arrive, so the event loop never spends
    more than one network chunk's worth of CPU on it at a time.
    """

    def __init__(self, body: AsyncIterator[bytes]) -> None:
        self._body = aiter(body)
        self._pending = memoryview(b"")
        self._sha256 = hashlib.sha256()
        self.size = 0
        self.eof = False

    @property
    def sha256(self) -> str:
        return self._sha256.hexdigest()

    async def _next_chunk(self) -> memoryview:
        if self._pending:
            chunk, self._pending = self._pending, memoryview(b"")
            return chunk
        if self.eof:
            return memoryview(b"")
        async for data in self._body:
            if data:
                self._sha256.update(data)
                self.size += len(data)
                return memoryview(data)
        self.eof = True
        return memoryview(b"")

    async def read(self, n: int) -> bytearray:
        """Up to ``n`` bytes; fewer only at the end of the body."""
        buf = bytearray()
        while len(buf) < n:
            chunk = await self._next_chunk()
            if not chunk:
                break
            take = n - len(buf)
            buf += chunk[:take]
            if len(chunk) > take:
                self._pending = chunk[take:]
        return buf

    async def fill(self, part: PartBuffer, n: int) -> None:
        """Add bytes to ``part`` until it holds ``n``; fewer only at the end of the body."""
        while part.size < n:
            chunk = await self._next_chunk()
            if not chunk:
                return
            take = n - part.size
            if len(chunk) > take:
                self._pending = chunk[take:]
            await part.add(chunk[:take])

    async def at_eof(self) -> bool:
        """True when no byte is left, reading ahead by at most one chunk to know."""
        if self._pending:
            return False
        self._pending = await self._next_chunk()
        return not self._pending
