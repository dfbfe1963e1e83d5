"""Part buffers (proxy/streaming/part_buffer.py): in memory while the budget takes each
chunk, in an unnamed temporary file once it does not; the same bytes, CRC32 and MD5
either way, and nothing held after close."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.streaming.budget import MemoryBudget
from proxy.streaming.part_buffer import PartBuffer


async def content(part: PartBuffer) -> bytes:
    body = await part.body()
    if isinstance(body, bytes | bytearray):
        return bytes(body)
    return await asyncio.to_thread(body.read)


def crc32_of(data: bytes) -> str:
    return base64.b64encode(zlib.crc32(data).to_bytes(4, "big")).decode()


async def test_within_the_budget_it_stays_in_memory() -> None:
    budget = MemoryBudget(100)
    part = PartBuffer(budget)
    for chunk in (b"abc", b"", b"defg"):
        await part.add(chunk)
    assert not part.spilled
    assert (part.size, budget.in_use) == (7, 7)  # reserved as bytes came, not ahead
    assert await content(part) == b"abcdefg"
    assert part.crc32 == crc32_of(b"abcdefg")
    assert await part.md5() == hashlib.md5(b"abcdefg").digest()
    part.close()
    assert budget.in_use == 0


async def test_past_the_budget_it_moves_to_a_file_and_gives_the_memory_back() -> None:
    budget = MemoryBudget(10)
    other = PartBuffer(budget)
    await other.add(b"x" * 6)
    part = PartBuffer(budget)
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
    body = await part.body()
    assert not isinstance(body, bytes | bytearray)
    assert os.readlink(f"/proc/self/fd/{body.fileno()}").endswith("(deleted)")
    part.close()
    other.close()
    part.close()  # twice is harmless
    assert budget.in_use == 0


async def test_a_declared_size_reserves_nothing_ahead() -> None:
    """Many buffers that each got one byte hold one byte each, however large the part
    they are filling may become: a stalled client keeps nobody else waiting."""
    budget = MemoryBudget(64)
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
    assert budget.in_use == 0


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


@settings(max_examples=40, deadline=None)
@given(
    total=st.integers(1, 64),
    chunks=st.lists(st.binary(min_size=0, max_size=24), max_size=12),
)
def test_same_bytes_and_checksums_in_memory_or_on_disk(total: int, chunks: list[bytes]) -> None:
    async def run() -> None:
        budget = MemoryBudget(total)
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
        assert budget.in_use == 0

    asyncio.run(run())
