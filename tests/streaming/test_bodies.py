"""Body helpers (proxy/streaming/bodies.py): size limits, and re-chunking while hashing."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.streaming.bodies import BodyTooLarge, HashingReader, limited

EMPTY_SHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


class Body:
    """An async body over fixed chunks that records how many chunks were pulled."""

    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = chunks
        self.pulled = 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for chunk in self.chunks:
            self.pulled += 1
            yield chunk


async def collect(body: AsyncIterator[bytes]) -> list[bytes]:
    return [chunk async for chunk in body]


chunk_lists = st.lists(st.binary(max_size=64), max_size=16)


# --- limited -------------------------------------------------------------------------------------


@given(chunk_lists, st.integers(min_value=0, max_value=200))
def test_limited_raises_exactly_when_the_total_exceeds_the_limit(chunks: list[bytes], limit: int) -> None:
    async def scenario() -> None:
        body = Body(chunks)
        passed: list[bytes] = []
        total = sum(map(len, chunks))
        if total <= limit:
            assert await collect(limited(aiter(body), limit)) == chunks
            return
        with pytest.raises(BodyTooLarge) as info:
            async for chunk in limited(aiter(body), limit):
                passed.append(chunk)
        assert info.value.limit == limit
        # Everything before the chunk that crossed the limit went through, and no more.
        crossing = next(i for i in range(len(chunks)) if sum(map(len, chunks[: i + 1])) > limit)
        assert passed == chunks[:crossing]
        assert sum(map(len, passed)) <= limit
        assert body.pulled == crossing + 1  # stops reading at once

    asyncio.run(scenario())


async def test_limited_at_the_boundary() -> None:
    assert await collect(limited(aiter(Body([b"abc", b"de"])), 5)) == [b"abc", b"de"]
    with pytest.raises(BodyTooLarge, match="limit of 4 bytes"):
        await collect(limited(aiter(Body([b"abc", b"de"])), 4))


async def test_limited_with_zero_limit() -> None:
    assert await collect(limited(aiter(Body([b"", b""])), 0)) == [b"", b""]
    with pytest.raises(BodyTooLarge):
        await collect(limited(aiter(Body([b"x"])), 0))


# --- HashingReader -------------------------------------------------------------------------------

ops = st.lists(st.one_of(st.integers(min_value=0, max_value=100), st.just("eof")), max_size=20)


@given(chunk_lists, ops, st.integers(min_value=1, max_value=100))
def test_hashing_reader_rechunks_any_input(chunks: list[bytes], steps: list[int | str], drain: int) -> None:
    data = b"".join(chunks)
    longest = max(map(len, chunks), default=0)

    async def scenario() -> None:
        reader = HashingReader(aiter(Body(chunks)))
        out = bytearray()
        for step in [*steps, "eof"]:
            if step == "eof":
                assert await reader.at_eof() == (len(out) == len(data))
            else:
                assert isinstance(step, int)
                got = await reader.read(step)
                assert bytes(got) == data[len(out) : len(out) + step]
                out += got
            # Hashing runs ahead of what was returned by at most one input chunk.
            assert 0 <= reader.size - len(out) <= longest
        while piece := await reader.read(drain):
            assert len(piece) == drain or len(out) + len(piece) == len(data)
            out += piece
        assert bytes(out) == data
        assert await reader.at_eof()
        assert reader.eof
        assert reader.size == len(data)
        assert reader.sha256 == hashlib.sha256(data).hexdigest()
        assert await reader.read(10) == b""

    asyncio.run(scenario())


@given(chunk_lists, st.integers(min_value=1, max_value=100))
def test_read_returns_full_pieces_until_the_end(chunks: list[bytes], n: int) -> None:
    data = b"".join(chunks)

    async def scenario() -> None:
        reader = HashingReader(aiter(Body(chunks)))
        pieces = []
        while piece := await reader.read(n):
            pieces.append(bytes(piece))
        assert pieces == [data[i : i + n] for i in range(0, len(data), n)]

    asyncio.run(scenario())


@pytest.mark.parametrize("chunks", [[], [b""], [b"", b"", b""]])
async def test_empty_body(chunks: list[bytes]) -> None:
    reader = HashingReader(aiter(Body(chunks)))
    assert await reader.at_eof()
    assert await reader.read(5) == b""
    assert reader.size == 0
    assert reader.sha256 == EMPTY_SHA256


async def test_at_eof_looks_past_trailing_empty_chunks() -> None:
    reader = HashingReader(aiter(Body([b"", b"abc", b"", b""])))
    assert not await reader.at_eof()
    assert await reader.read(3) == b"abc"
    assert await reader.at_eof()
    assert reader.sha256 == hashlib.sha256(b"abc").hexdigest()


async def test_at_eof_does_not_lose_the_chunk_it_reads_ahead() -> None:
    reader = HashingReader(aiter(Body([b"hello", b" world"])))
    assert not await reader.at_eof()
    assert not await reader.at_eof()  # asking twice reads nothing more
    assert reader.size == 5
    assert await reader.read(100) == b"hello world"
    assert await reader.at_eof()


async def test_read_pulls_only_the_chunks_it_needs() -> None:
    body = Body([b"ab", b"cd", b"ef", b"gh"])
    reader = HashingReader(aiter(body))
    assert await reader.read(3) == b"abc"
    assert body.pulled == 2
    assert await reader.read(1) == b"d"  # from the chunk already pulled
    assert body.pulled == 2
    assert await reader.read(0) == b""
    assert body.pulled == 2


async def test_read_exactly_at_a_chunk_boundary_does_not_pull_further() -> None:
    body = Body([b"abc", b"def"])
    reader = HashingReader(aiter(body))
    assert await reader.read(3) == b"abc"
    assert body.pulled == 1
    assert reader.size == 3


async def test_hashing_reader_over_a_limited_body() -> None:
    reader = HashingReader(limited(aiter(Body([b"12345", b"678"])), 7))
    assert await reader.read(5) == b"12345"
    with pytest.raises(BodyTooLarge):
        await reader.read(5)
