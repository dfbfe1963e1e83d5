"""Part buffers (proxy/streaming/part_buffer.py): in memory while the budget takes each
chunk, in an unnamed temporary file once it does not; the same bytes, CRC32 and MD5
either way, a fixed charge per buffer that holds bytes, and nothing held after close
(memory unmapped but for SPARE_BLOCKS blocks kept for the next buffers, file closed,
budget given back)."""

from __future__ import annotations

import asyncio
import base64
import gc
import hashlib
import mmap
import os
import resource
import tempfile
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.streaming.budget import MemoryBudget
from proxy.streaming.part_buffer import BLOCK, PART_OVERHEAD, PIECE, SPARE_BLOCKS, PartBuffer

MiB = 1024 * 1024
SPARE = SPARE_BLOCKS * BLOCK  # what closed buffers may leave mapped for the next ones


def budget_for(buffers: int, nbytes: int) -> MemoryBudget:
    """A budget that takes ``buffers`` buffers' fixed charge and ``nbytes`` bytes."""
    return MemoryBudget(buffers * PART_OVERHEAD + nbytes)


async def content(part: PartBuffer) -> bytes:
    """What aiohttp would send: the body's pieces, each at most PIECE bytes."""
    body = await part.body()
    pieces = [bytes(piece) async for piece in body]
    assert all(0 < len(piece) <= PIECE for piece in pieces)
    return b"".join(pieces)


def crc32_of(data: bytes) -> str:
    return base64.b64encode(zlib.crc32(data).to_bytes(4, "big")).decode()


def rss_anon() -> int:
    """The process's resident anonymous memory (heap, mmaps), from the kernel."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no RssAnon in /proc/self/status")


def temp_files_open() -> list[str]:
    """What this process's descriptors into the temporary directory point at."""
    tmp = os.path.realpath(tempfile.gettempdir())
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue  # closed meanwhile (the listing's own descriptor)
        if target.startswith(tmp + "/"):
            found.append(target)
    return found


async def test_within_the_budget_it_stays_in_memory() -> None:
    budget = budget_for(1, 100)
    part = PartBuffer(budget)
    for chunk in (b"abc", b"", b"defg"):
        await part.add(chunk)
    assert not part.spilled
    assert (part.size, budget.in_use) == (7, 7)  # reserved as bytes came, not ahead
    assert await content(part) == b"abcdefg"
    assert part.crc32 == crc32_of(b"abcdefg")
    assert await part.md5() == hashlib.md5(b"abcdefg").digest()
    part.close()
    assert (budget.in_use, budget.charged) == (0, 0)


async def test_past_the_budget_it_moves_to_a_file_and_gives_the_memory_back() -> None:
    budget = budget_for(2, 10)
    other = PartBuffer(budget)
    await other.add(b"x" * 6)
    part = PartBuffer(budget)
    files_before = temp_files_open()
    await part.add(b"0123")
    await part.add(b"456")  # 6 + 4 + 3 > 10: refused, so the part spills
    assert part.spilled
    assert budget.in_use == 6  # only the other buffer's bytes
    await part.add(b"789")
    assert part.size == 10
    assert await content(part) == b"0123456789"
    assert part.crc32 == crc32_of(b"0123456789")
    assert await part.md5() == hashlib.md5(b"0123456789").digest()
    # The file has no name: nothing is left on disk whatever happens to the process.
    new = [f for f in temp_files_open() if f not in files_before]
    assert len(new) == 1 and new[0].endswith("(deleted)")
    part.close()
    assert [f for f in temp_files_open() if f not in files_before] == []  # closed
    other.close()
    part.close()  # twice is harmless
    assert (budget.in_use, budget.charged) == (0, 0)


async def test_a_declared_size_reserves_nothing_ahead() -> None:
    """Many buffers that each got one byte hold one byte each, however large the part
    they are filling may become: a stalled client keeps nobody else waiting."""
    budget = budget_for(65, 64)
    parts = [PartBuffer(budget) for _ in range(64)]
    for part in parts:
        await part.add(b"x")
    assert budget.in_use == 64
    assert not any(p.spilled for p in parts)
    late = PartBuffer(budget)
    await late.add(b"y")  # the budget is spent: it spills instead of waiting
    assert late.spilled
    for part in (*parts, late):
        part.close()
    assert (budget.in_use, budget.charged) == (0, 0)


async def test_each_buffer_holding_bytes_is_charged_its_fixed_cost_until_closed() -> None:
    budget = budget_for(2, 100)
    empty = PartBuffer(budget)
    assert budget.charged == 0  # no bytes yet: nothing on its way, nothing charged
    first, second = PartBuffer(budget), PartBuffer(budget)
    await first.add(b"a" * 60)
    assert (budget.charged, budget.in_use) == (PART_OVERHEAD, 60)
    await first.add(b"b" * 40)  # what is left beside one charge
    assert not first.spilled
    await second.add(b"c")  # the second charge takes the room the byte would need
    assert second.spilled
    assert budget.charged == 2 * PART_OVERHEAD
    # Charged past the total all the same: the cost is held whatever the budget says.
    third = PartBuffer(budget)
    await third.add(b"d")
    assert third.spilled and budget.charged == 3 * PART_OVERHEAD
    for part in (empty, first, second, third, first):
        part.close()
    assert (budget.in_use, budget.charged) == (0, 0)


async def test_a_chunk_counted_is_stored_even_if_the_adder_is_cancelled() -> None:
    budget = MemoryBudget(1)
    part = PartBuffer(budget)
    task = asyncio.ensure_future(part.add(b"abcdef" * 10_000))
    await asyncio.sleep(0)  # started: in a worker thread now
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert part.size == 60_000
    assert await content(part) == b"abcdef" * 10_000
    part.close()


async def test_memory_goes_back_to_the_system_on_close_even_with_its_body_still_held() -> None:
    """A part's memory is unmapped by close() but for the spare blocks, whoever still
    holds its body (botocore keeps a request's body past the call), and the body can
    no longer read what the blocks hold next; RssAnon is what the kernel counts."""
    chunk = bytes(range(256)) * 4096  # 1 MiB
    budget = MemoryBudget(256 * MiB)
    gc.collect()
    before = rss_anon()
    part = PartBuffer(budget)
    for _ in range(48):
        await part.add(chunk)
    body = await part.body()
    assert rss_anon() - before >= 48 * MiB - SPARE - 4 * MiB  # spare blocks resident already
    part.close()
    gc.collect()
    assert rss_anon() - before < SPARE + 8 * MiB
    with pytest.raises(ValueError):
        body.read(10)
    del body


async def test_the_next_buffers_reuse_the_blocks_of_closed_ones() -> None:
    """A fresh block costs a page fault per page written, a spare one nothing: a steady
    run of parts (a long upload) writes into the blocks it had, and each part holds its
    own bytes."""
    budget = MemoryBudget(256 * MiB)
    size = 8 * MiB
    assert size <= SPARE
    faults = 0
    for n in range(8):
        chunk = bytes([n]) * MiB
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        part = PartBuffer(budget)
        for _ in range(size // MiB):
            await part.add(chunk)
        if n:
            faults += resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
        assert await content(part) == bytes([n]) * size
        part.close()
    pages_written = 7 * size // mmap.PAGESIZE
    assert faults < pages_written / 10


async def test_a_piece_still_out_at_close_keeps_its_bytes_and_is_freed_with_it() -> None:
    """aiohttp may still hold the piece it is writing when the part is closed (a
    cancelled upload): that piece stays valid, and its memory goes when it does."""
    chunk = b"\xab" * MiB
    budget = MemoryBudget(256 * MiB)
    gc.collect()
    before = rss_anon()
    part = PartBuffer(budget)
    for _ in range(32):
        await part.add(chunk)
    pieces = aiter(await part.body())
    piece = await anext(pieces)
    part.close()  # no BufferError: the block under the piece is left to the piece
    assert (budget.in_use, budget.charged) == (0, 0)
    assert bytes(piece) == b"\xab" * PIECE
    assert rss_anon() - before < SPARE + 8 * MiB
    # The block under the piece is not a spare one: the next buffers' bytes go elsewhere.
    others = [PartBuffer(budget) for _ in range(2)]
    for other in others:
        for _ in range(32):
            await other.add(b"\xcd" * MiB)
    assert bytes(piece) == b"\xab" * PIECE
    for other in others:
        other.close()
    del piece, pieces
    gc.collect()
    assert rss_anon() - before < SPARE + 8 * MiB


@settings(max_examples=40, deadline=None)
@given(
    total=st.integers(1, 64),
    chunks=st.lists(st.binary(min_size=0, max_size=24), max_size=12),
)
def test_same_bytes_and_checksums_in_memory_or_on_disk(total: int, chunks: list[bytes]) -> None:
    async def run() -> None:
        budget = budget_for(1, total)
        part = PartBuffer(budget)
        for chunk in chunks:
            await part.add(chunk)
        data = b"".join(chunks)
        assert part.size == len(data)
        assert part.spilled == (len(data) > total)
        assert budget.in_use == (0 if part.spilled else len(data))
        assert await content(part) == data
        assert part.crc32 == crc32_of(data)
        assert await part.md5() == hashlib.md5(data).digest()
        part.close()
        assert (budget.in_use, budget.charged) == (0, 0)

    asyncio.run(run())
