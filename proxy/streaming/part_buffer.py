"""The bytes of one part on their way to S3: in memory while the budget allows,
else in a temporary file.

Each chunk is reserved from the MemoryBudget as it is added. When the budget cannot
take it, the buffer moves to an unnamed temporary file (O_TMPFILE in $TMPDIR: it
vanishes with the process, however that ends) and gives its reservation back; file
writes run in worker threads. The buffer keeps a CRC32 of its bytes as they come, so
S3 gets the part's checksum without a second pass over it on the event loop.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import tempfile
import zlib
from collections.abc import Coroutine
from typing import Any, BinaryIO

from proxy.streaming.budget import MemoryBudget

Bytes = bytes | bytearray | memoryview


class PartBuffer:
    def __init__(self, budget: MemoryBudget) -> None:
        self._budget = budget
        self._memory = bytearray()
        self._reserved = 0
        self._file: BinaryIO | None = None
        self._crc32 = 0
        self.size = 0

    @property
    def spilled(self) -> bool:
        return self._file is not None

    @property
    def crc32(self) -> str:
        """The CRC32 of the bytes, as S3's x-amz-checksum-crc32 header takes it."""
        return base64.b64encode(self._crc32.to_bytes(4, "big")).decode("ascii")

    async def add(self, data: Bytes) -> None:
        if not data:
            return
        self._crc32 = zlib.crc32(data, self._crc32)
        self.size += len(data)
        if self._file is None and self._budget.try_acquire(len(data)):
            self._reserved += len(data)
            self._memory += data
            return
        await _finished(self._write_to_file(data))

    async def _write_to_file(self, data: Bytes) -> None:
        if self._file is None:
            self._file = await asyncio.to_thread(tempfile.TemporaryFile)
            memory, self._memory = self._memory, bytearray()
            await asyncio.to_thread(self._file.write, memory)
            del memory
            self._give_back()
        await asyncio.to_thread(self._file.write, data)

    async def md5(self) -> bytes:
        """The MD5 of the bytes (what S3 makes a part's ETag of), computed in a thread."""
        if self._file is None:
            return await asyncio.to_thread(_md5_of_bytes, self._memory)
        return await asyncio.to_thread(_md5_of_file, self._file)

    async def body(self) -> bytes | bytearray | BinaryIO:
        """What to send: the bytes, or the file rewound to its start."""
        if self._file is None:
            return self._memory
        await asyncio.to_thread(self._file.flush)
        self._file.seek(0)
        return self._file

    def close(self) -> None:
        """Free the memory and the file; safe to call more than once."""
        self._memory = bytearray()
        self._give_back()
        if self._file is not None:
            self._file.close()  # an unnamed file: closing it frees its blocks

    def _give_back(self) -> None:
        self._budget.release(self._reserved)
        self._reserved = 0


async def _finished(work: Coroutine[Any, Any, None]) -> None:
    """Run ``work`` to its end even if the caller is cancelled meanwhile, so that a
    chunk counted by add() is always in the buffer; the cancellation is raised after."""
    task = asyncio.ensure_future(work)
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:
        await asyncio.wait([task])
        if not task.cancelled():
            task.exception()  # retrieved: the cancellation is what goes up
        raise


def _md5_of_bytes(data: bytearray) -> bytes:
    return hashlib.md5(data, usedforsecurity=False).digest()


def _md5_of_file(fh: BinaryIO) -> bytes:
    fh.flush()
    fh.seek(0)
    digest = hashlib.md5(usedforsecurity=False)
    while block := fh.read(1024 * 1024):
        digest.update(block)
    return digest.digest()
