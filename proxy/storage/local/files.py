"""Writing files durably: a block writer that overlaps disk and network, synced
writes, and the validator a file's identity gives."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any, BinaryIO

WRITE_BLOCK = 1024 * 1024
SYNC_EVERY = 16 * 1024 * 1024


class BlockWriter:
    """Writes a stream to a file in worker threads, one block while the caller gathers
    the next, and syncs to disk on the way so that the final sync has little left."""

    def __init__(self, fh: BinaryIO) -> None:
        self._fh = fh
        self._queued: list[bytes | bytearray] = []
        self._queued_size = 0
        self._writing: asyncio.Future[Any] | None = None
        self._syncing: asyncio.Future[Any] | None = None
        self._unsynced = 0

    async def write(self, data: bytes | bytearray) -> None:
        """Take ``data`` (not to be changed afterwards); waits only for a block's turn."""
        # Queued before any wait, so that flush() still writes it if this is cancelled.
        self._queued.append(data)
        self._queued_size += len(data)
        if self._queued_size >= WRITE_BLOCK:
            await self._dispatch()

    async def flush(self) -> None:
        """Write what is queued and wait for every write and sync to end."""
        if self._queued:
            await self._dispatch()
        await self.settle()

    async def settle(self) -> None:
        """Wait for every started thread call, so none touches the file after we go on."""
        outcomes = await asyncio.gather(
            *(f for f in (self._writing, self._syncing) if f is not None), return_exceptions=True
        )
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome

    async def _dispatch(self) -> None:
        if self._writing is not None:
            await self._writing
        # A block that came whole is written as it is, sparing a copy.
        block = self._queued[0] if len(self._queued) == 1 else b"".join(self._queued)
        self._queued, self._queued_size = [], 0
        self._writing = asyncio.ensure_future(asyncio.to_thread(self._fh.write, block))
        self._unsynced += len(block)
        if self._unsynced >= SYNC_EVERY and (self._syncing is None or self._syncing.done()):
            self._syncing = asyncio.ensure_future(asyncio.to_thread(os.fdatasync, self._fh.fileno()))
            self._unsynced = 0


def local_etag(st: os.stat_result) -> str:
    """A strong validator from the file's identity: any replace makes a new inode."""
    return f'"{st.st_ino:x}-{st.st_mtime_ns:x}-{st.st_size:x}"'


def write_synced(path: Path, data: bytes) -> None:
    """Make ``path`` hold ``data``, on disk before this returns."""
    with open(path, "wb") as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
