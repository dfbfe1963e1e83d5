"""The bytes of one part on their way to S3: in memory while the budget allows,
else in a temporary file.

Each chunk is reserved from the MemoryBudget as it is added. When the budget cannot
take it, the buffer moves to an unnamed temporary file (O_TMPFILE in $TMPDIR: it
vanishes with the process, however that ends) and gives its reservation back; file
writes run in worker threads. The buffer keeps a CRC32 of its bytes as they come, so
S3 gets the part's checksum without a second pass over it on the event loop. A
buffer that holds bytes is also charged PART_OVERHEAD on the budget until it is
closed (see budget.py).

In memory, the bytes live in anonymous mappings of BLOCK bytes each (mmap), not in
malloc'd buffers: a page becomes resident only once written, and close() unmaps it,
so the memory goes back to the system at once. Part-sized bytearrays, grown and
freed by the hundred, fragment malloc's heap instead, and the process keeps the
pages long after the parts are gone. Up to SPARE_BLOCKS blocks of closed buffers
are kept for the next ones instead of unmapped: a fresh mapping costs a page fault
and a page of zeros per 4 KiB written, 0.65 s of CPU per GiB on a 2-core VM, and a
steady upload cycles through the same few blocks (parts in flight, one filling).

A part may also be read while it fills (``until_stored`` and ``read_piece``), by an
upload that streams it to S3 as its bytes come (s3.part_stream).

body() hands the part over as a PartBody: sized, seekable and readable, as botocore
wants a body to be (it reads it once to sign it, and seeks back to retry), and an
async iterable of pieces of at most PIECE bytes, which aiohttp sends one by one,
waiting for the socket to drain between them. Given one large buffer instead, aiohttp
writes it at once and the transport copies whatever the socket did not take: nearly
the whole part, a second time.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import io
import mmap
import os
import tempfile
import zlib
from collections.abc import AsyncIterator, Coroutine
from typing import Any

from proxy.streaming.budget import MemoryBudget

Bytes = bytes | bytearray | memoryview

BLOCK = 1024 * 1024
# What one write to S3's socket may take: per part in flight, what the transport
# copies at most when the socket is full, and what a spilled part reads per trip to
# a worker thread. In bench/memory.py, larger pieces cost less CPU and more memory:
# 128 KiB, 10 to 20 MiB more at the peak (a few MiB under the target of 356 MiB at
# the 256 MiB budget) for 20 to 40% more throughput; 256 KiB, 25 to 30 MiB more.
PIECE = 64 * 1024
# The fixed cost of a part on its way besides its bytes, charged while the buffer
# holds any: for the part being filled, the client's request and connection buffers;
# for one being sent, its S3 request and connection, and the piece in flight. In
# bench/memory.py's 100 concurrent uploads, RSS beyond the buffered bytes and the
# idle process came to about 225 KiB per such part (200 of them at the peak); each
# 64 KiB less charged let the peak grow by 5 to 9 MiB.
PART_OVERHEAD = 192 * 1024
# Reads of a spilled part, for its MD5.
_FILE_READ = 1024 * 1024
# Blocks kept mapped for reuse beyond what the budget counts: a 6 MiB part, four in
# flight and one filling, reuses 30; 16 MiB more RSS at most, once uploads stop.
SPARE_BLOCKS = 16
_spare_blocks: list[mmap.mmap] = []


def _new_block() -> mmap.mmap:
    if _spare_blocks:
        return _spare_blocks.pop()
    # Private: a shared anonymous mapping would be shmem, kept apart.
    return mmap.mmap(-1, BLOCK, flags=mmap.MAP_PRIVATE)


def _retire_block(block: mmap.mmap) -> None:
    """Keep ``block`` for reuse, or unmap it; neither while a view of it is alive (a
    body's piece in a socket write): it is then unmapped with the last such view."""
    if len(_spare_blocks) < SPARE_BLOCKS:
        try:
            block.resize(BLOCK)  # its size already: fails only while a view is exported
        except BufferError:
            return
        _spare_blocks.append(block)
        return
    with contextlib.suppress(BufferError):
        block.close()


class PartBuffer:
    def __init__(self, budget: MemoryBudget) -> None:
        self._budget = budget
        self._blocks: list[mmap.mmap] = []
        self._bodies: list[_MemoryBody] = []  # handed out over _blocks
        self._reserved = 0  # the bytes in _blocks, all reserved from the budget
        self._file: io.FileIO | None = None
        self._crc32 = 0
        self._charged = 0
        self.size = 0
        self._stored = 0  # of size, the bytes in memory or in the file: readable
        self._grew: asyncio.Event | None = None  # set when _stored grows, for a reader waiting
        self._closed = False

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
        if not self._charged:  # from the first byte on: an empty buffer costs nothing
            self._charged = PART_OVERHEAD
            self._budget.charge(PART_OVERHEAD)
        self._crc32 = zlib.crc32(data, self._crc32)
        self.size += len(data)
        if self._file is None and self._budget.try_acquire(len(data)):
            self._copy_in(data)
            self._now_stored(self.size)
            return
        await _finished(self._write_to_file(data, self.size))

    def _now_stored(self, size: int) -> None:
        self._stored = size
        if self._grew is not None:
            self._grew.set()
            self._grew = None

    async def until_stored(self, size: int) -> None:
        """Wait until the first ``size`` bytes can be read; ValueError once closed."""
        while self._stored < size:
            if self._closed:
                raise ValueError("the part's buffer is closed")
            if self._grew is None:
                self._grew = asyncio.Event()
            await self._grew.wait()

    async def read_piece(self, offset: int, n: int) -> memoryview:
        """Up to ``n`` stored bytes at ``offset`` (fewer at a block's end), as they
        are now: a view of memory, or read from the file in a thread."""
        if self._closed or offset + n > self._stored:
            raise ValueError(f"bytes {offset}+{n} of the part are not stored")
        if self._blocks:  # a part moving to its file reads from memory until it is there
            return _view_of(self._blocks, offset, n)
        assert self._file is not None
        return await _pread_piece(self._file, offset, n)

    def _copy_in(self, data: Bytes) -> None:
        view = memoryview(data)
        while view:
            index, start = divmod(self._reserved, BLOCK)
            if index == len(self._blocks):
                self._blocks.append(_new_block())
            n = min(len(view), BLOCK - start)
            self._blocks[index][start : start + n] = view[:n]
            view = view[n:]
            self._reserved += n

    async def _write_to_file(self, data: Bytes, size: int) -> None:
        if self._file is None:
            self._file = await asyncio.to_thread(_new_file)
            await asyncio.to_thread(_write_blocks, self._file, self._blocks, self._reserved)
            self._free_blocks()
            self._give_back()
        await asyncio.to_thread(_write_all, self._file, data)
        self._now_stored(size)

    async def md5(self) -> bytes:
        """The MD5 of the bytes (what S3 makes a part's ETag of), computed in a thread."""
        if self._file is None:
            return await asyncio.to_thread(_md5_of_blocks, self._blocks, self._reserved)
        return await asyncio.to_thread(_md5_of_file, self._file, self.size)

    async def body(self) -> PartBody:
        """The bytes to send, from their start."""
        if self._file is None:
            body = _MemoryBody(self._blocks, self.size)
            self._bodies.append(body)
            return body
        return _FileBody(self._file, self.size)

    def close(self) -> None:
        """Free the memory and the file; safe to call more than once."""
        self._closed = True
        self._now_stored(self._stored)  # a reader waiting finds it closed
        self._free_blocks()
        self._give_back()
        self._budget.refund(self._charged)
        self._charged = 0
        if self._file is not None:
            self._file.close()  # an unnamed file: closing it frees its blocks

    def _free_blocks(self) -> None:
        blocks, self._blocks = self._blocks, []
        # A block goes to another buffer next: no body may read it after this.
        for body in self._bodies:
            body.detach()
        self._bodies.clear()
        for block in blocks:
            _retire_block(block)

    def _give_back(self) -> None:
        self._budget.release(self._reserved)
        self._reserved = 0


class PartBody:
    """A part's bytes for botocore and aiohttp: ``read``/``seek``/``tell`` and
    ``len()`` as a file's, and async iteration from the current position in pieces
    of at most PIECE bytes."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._pos = 0

    def __len__(self) -> int:
        return self._size

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self._pos, os.SEEK_END: self._size}[whence]
        if base + offset < 0:
            raise ValueError("negative seek position")
        self._pos = base + offset
        return self._pos

    def read(self, n: int = -1) -> bytes:
        """Up to ``n`` bytes from the current position (all that is left if ``n`` < 0)."""
        left = max(0, self._size - self._pos)
        n = left if n is None or n < 0 else min(n, left)
        data = self._read_at(self._pos, n)
        self._pos += len(data)
        return data

    def __aiter__(self) -> AsyncIterator[memoryview]:
        return self._pieces()

    async def _pieces(self) -> AsyncIterator[memoryview]:
        while self._pos < self._size:
            piece = await self._piece_at(self._pos, min(PIECE, self._size - self._pos))
            if not piece:
                raise EOFError(f"the part ended at {self._pos} of {self._size} bytes")
            self._pos += len(piece)
            yield piece

    def _read_at(self, offset: int, n: int) -> bytes:
        raise NotImplementedError

    async def _piece_at(self, offset: int, n: int) -> memoryview:
        raise NotImplementedError


class _MemoryBody(PartBody):
    def __init__(self, blocks: list[mmap.mmap], size: int) -> None:
        super().__init__(size)
        self._blocks = list(blocks)  # the buffer's list is emptied when it closes

    def detach(self) -> None:
        """The buffer closed: its blocks may hold another part's bytes from now on."""
        self._blocks = []

    def _read_at(self, offset: int, n: int) -> bytes:
        views = []
        while n > 0:
            view = self._view(offset, n)
            views.append(view)
            offset += len(view)
            n -= len(view)
        return b"".join(views)

    async def _piece_at(self, offset: int, n: int) -> memoryview:
        return self._view(offset, n)

    def _view(self, offset: int, n: int) -> memoryview:
        return _view_of(self._blocks, offset, n)


class _FileBody(PartBody):
    def __init__(self, file: io.FileIO, size: int) -> None:
        super().__init__(size)
        self._file = file  # fileno() fails once it is closed: its number may be reused

    def _read_at(self, offset: int, n: int) -> bytes:
        # botocore reads the body on the event loop to sign it, as it would read any
        # file it is given; the part was just written, so this is the page cache.
        return os.pread(self._file.fileno(), n, offset)

    async def _piece_at(self, offset: int, n: int) -> memoryview:
        return await _pread_piece(self._file, offset, n)


def _view_of(blocks: list[mmap.mmap], offset: int, n: int) -> memoryview:
    """Up to ``n`` bytes at ``offset``, as far as its block goes: a view, no copy."""
    index, start = divmod(offset, BLOCK)
    if index >= len(blocks):
        raise ValueError("the part's buffer is closed")
    return memoryview(blocks[index])[start : start + min(n, BLOCK - start)]


async def _pread_piece(file: io.FileIO, offset: int, n: int) -> memoryview:
    # One piece per trip to a worker thread: every part in flight holds the piece it
    # is sending, so reading further ahead costs memory by the hundreds of parts
    # (256 KiB ahead: 30 MiB more RSS in bench/memory.py's runs). It is allocated
    # here, on the event loop's thread: buffers allocated in worker threads come from
    # malloc arenas of their own, which hold on to memory once freed.
    piece = bytearray(n)
    got = await asyncio.to_thread(os.preadv, file.fileno(), [piece], offset)
    return memoryview(piece)[:got]


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


def _new_file() -> io.FileIO:
    # Unbuffered: every write goes straight to the file, which positional reads
    # (os.pread) then see without a flush.
    file = tempfile.TemporaryFile(buffering=0)  # noqa: SIM115 (the buffer closes it)
    assert isinstance(file, io.FileIO)
    return file


def _write_all(file: io.FileIO, data: Bytes) -> None:
    view = memoryview(data)
    while view:
        written = file.write(view)  # a raw file may take less than given
        if not written:
            raise OSError(f"could not write to the part's temporary file ({written!r})")
        view = view[written:]


def _write_blocks(file: io.FileIO, blocks: list[mmap.mmap], size: int) -> None:
    for index, block in enumerate(blocks):
        with memoryview(block) as whole, whole[: min(BLOCK, size - index * BLOCK)] as view:
            _write_all(file, view)


def _md5_of_blocks(blocks: list[mmap.mmap], size: int) -> bytes:
    digest = hashlib.md5(usedforsecurity=False)
    for index, block in enumerate(blocks):
        with memoryview(block) as whole, whole[: min(BLOCK, size - index * BLOCK)] as view:
            digest.update(view)
    return digest.digest()


def _md5_of_file(file: io.FileIO, size: int) -> bytes:
    digest = hashlib.md5(usedforsecurity=False)
    offset = 0
    while offset < size:
        data = os.pread(file.fileno(), min(_FILE_READ, size - offset), offset)
        if not data:
            break
        digest.update(data)
        offset += len(data)
    return digest.digest()
