"""What PartBuffer.body() hands to botocore and aiohttp: a sized, seekable, readable
body that also iterates in pieces of at most PIECE bytes, the same bytes from memory
or from the spilled file; and, sent to S3 through a layer that fails the first
attempt, the same bytes again after botocore seeks back to retry."""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncIterator
from dataclasses import replace

import aioboto3
import pytest
from aiohttp.test_utils import TestServer

from proxy.storage.s3.objects import boto_config
from proxy.streaming.budget import MemoryBudget
from proxy.streaming.part_buffer import BLOCK, PART_OVERHEAD, PIECE, PartBody, PartBuffer
from tests.conftest import S3Endpoint, s3_config
from tests.s3_interposer import S3Interposer, Seen

MiB = 1024 * 1024
# Over two blocks and not a whole number of pieces, written in chunks that straddle
# block boundaries.
SIZE = 2 * BLOCK + 3 * PIECE + 12_345
CHUNK = 100_003


def payload(size: int = SIZE) -> bytes:
    return hashlib.shake_256(b"part").digest(size)


async def filled(data: bytes, *, spilled: bool) -> PartBuffer:
    budget = MemoryBudget(PART_OVERHEAD + (1 if spilled else len(data)))
    part = PartBuffer(budget)
    for start in range(0, len(data), CHUNK):
        await part.add(data[start : start + CHUNK])
    assert part.spilled == spilled
    return part


async def pieces_of(body: PartBody) -> list[bytes]:
    return [bytes(piece) async for piece in body]


@pytest.fixture(params=[False, True], ids=["memory", "spilled"])
async def part(request: pytest.FixtureRequest) -> AsyncIterator[PartBuffer]:
    part = await filled(payload(), spilled=request.param)
    yield part
    part.close()


async def test_pieces_are_the_exact_bytes_none_over_piece(part: PartBuffer) -> None:
    body = await part.body()
    assert len(body) == SIZE
    pieces = await pieces_of(body)
    assert b"".join(pieces) == payload()
    assert all(0 < len(piece) <= PIECE for piece in pieces)
    assert body.tell() == SIZE
    assert await pieces_of(body) == []  # at the end: nothing more until a seek


async def test_read_as_botocore_signs_then_seek_back_and_send(part: PartBuffer) -> None:
    body = await part.body()
    signed = hashlib.sha256()
    while chunk := body.read(MiB):  # botocore's payload hash: 1 MiB reads
        assert isinstance(chunk, bytes)
        signed.update(chunk)
    assert signed.digest() == hashlib.sha256(payload()).digest()
    assert body.read() == b"" and body.read(10) == b""
    assert body.seek(0) == 0
    assert b"".join(await pieces_of(body)) == payload()
    body.seek(0)  # a retry: the whole body once more
    assert b"".join(await pieces_of(body)) == payload()


async def test_seek_and_tell_as_a_file(part: PartBuffer) -> None:
    body = await part.body()
    assert body.seek(0, os.SEEK_END) == SIZE  # how botocore sizes a stream
    assert body.seek(-10, os.SEEK_CUR) == SIZE - 10
    assert body.read() == payload()[-10:]
    start = BLOCK - 7  # across a block boundary, from anywhere
    body.seek(start)
    assert body.read(20) == payload()[start : start + 20]
    body.seek(start)
    assert b"".join(await pieces_of(body)) == payload()[start:]
    with pytest.raises(ValueError):
        body.seek(-1)


async def test_an_empty_part_has_an_empty_body() -> None:
    part = PartBuffer(MemoryBudget(1))
    body = await part.body()
    assert (len(body), body.read(), await pieces_of(body)) == (0, b"", [])
    part.close()


async def test_a_spilled_body_fails_once_its_buffer_is_closed() -> None:
    """Its descriptor is gone, and its number may be another file's by now: no read
    may go to it."""
    part = await filled(payload(1000), spilled=True)
    body = await part.body()
    part.close()
    with pytest.raises(ValueError):
        body.read(10)


@pytest.fixture
async def failing_once(moto_endpoint: S3Endpoint) -> AsyncIterator[tuple[S3Interposer, S3Endpoint]]:
    """moto behind a layer that answers the first attempt of each object's write 500."""
    layer = S3Interposer(moto_endpoint.url)
    attempts: dict[str, int] = {}

    def fault(seen: Seen) -> int | None:
        if seen.method != "PUT":
            return None
        attempts[seen.path] = attempts.get(seen.path, 0) + 1
        return 500 if attempts[seen.path] == 1 else None

    layer.fault = fault
    server = TestServer(layer.app(), host="127.0.0.1")
    await server.start_server()
    yield layer, replace(moto_endpoint, url=str(server.make_url("")).rstrip("/"))
    await server.close()


@pytest.mark.parametrize("spilled", [False, True], ids=["memory", "spilled"])
async def test_botocore_retries_with_the_whole_body_again(
    failing_once: tuple[S3Interposer, S3Endpoint], moto_endpoint: S3Endpoint, moto_bucket: str, spilled: bool
) -> None:
    layer, endpoint = failing_once
    cfg = s3_config(endpoint, moto_bucket, max_attempts=3)
    part = await filled(payload(), spilled=spilled)
    try:
        async with aioboto3.Session().client("s3", endpoint_url=endpoint.url, config=boto_config(cfg)) as s3:
            await s3.put_object(
                Bucket=moto_bucket,
                Key="retried",
                Body=await part.body(),
                ContentLength=part.size,
                ChecksumCRC32=part.crc32,
            )
    finally:
        part.close()
    puts = [seen for seen in layer.seen if seen.method == "PUT"]
    assert [seen.body_size for seen in puts] == [SIZE, SIZE]  # failed once, sent whole again
    stored = moto_endpoint.client().get_object(Bucket=moto_bucket, Key="retried")["Body"].read()
    assert stored == payload()
