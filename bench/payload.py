"""The bytes every upload sends: one random 8 MiB block, repeated and cut to size."""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncIterator, Iterator

from bench.settings import MiB

BLOCK_SIZE = 8 * MiB
# What the streaming HTTP client hands aiohttp at a time.
SEND_CHUNK = 1 * MiB


class Payload:
    def __init__(self, block: bytes | None = None) -> None:
        self.block = os.urandom(BLOCK_SIZE) if block is None else block
        self._view = memoryview(self.block)
        self._sha256: dict[int, str] = {}

    def blocks(self, size: int, piece: int = BLOCK_SIZE, start: int = 0) -> Iterator[memoryview]:
        """``size`` bytes from ``start``, in pieces of at most ``piece`` bytes (a divisor
        of the block), views of the block: no copy."""
        if BLOCK_SIZE % piece:
            raise ValueError(f"piece must divide {BLOCK_SIZE}")
        sent = 0
        while sent < size:
            offset = (start + sent) % BLOCK_SIZE
            n = min(piece, size - sent, BLOCK_SIZE - offset)
            yield self._view[offset : offset + n]
            sent += n

    async def stream(self, size: int, start: int = 0) -> AsyncIterator[memoryview]:
        """For an HTTP request body: streamed, as a client sends a file."""
        for chunk in self.blocks(size, SEND_CHUNK, start):
            yield chunk

    def slice(self, offset: int, length: int) -> bytes:
        """``length`` bytes of the repeated stream from ``offset``, as one new buffer."""
        pieces = []
        while length > 0:
            start = offset % BLOCK_SIZE
            n = min(length, BLOCK_SIZE - start)
            pieces.append(self._view[start : start + n])
            offset += n
            length -= n
        return b"".join(pieces)

    def _hash(self, size: int) -> str:
        digest = hashlib.sha256()
        for block in self.blocks(size):
            digest.update(block)
        return digest.hexdigest()

    async def sha256(self, size: int) -> str:
        """Hex SHA-256 of the first ``size`` bytes (computed once per size)."""
        if size not in self._sha256:
            self._sha256[size] = await asyncio.to_thread(self._hash, size)
        return self._sha256[size]
