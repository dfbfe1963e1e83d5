"""The transfers that get timed: through the proxy, and the references without it."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp

from bench.payload import Payload
from bench.settings import BenchError


async def timed(operation: Awaitable[object]) -> float:
    """Seconds ``operation`` takes."""
    start = time.perf_counter()
    await operation
    return time.perf_counter() - start


def http_session() -> aiohttp.ClientSession:
    # No total timeout: a 1 GiB upload on a busy machine can take minutes.
    return aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=600))


async def proxy_put(
    session: aiohttp.ClientSession, base_url: str, key: str, payload: Payload, size: int
) -> dict[str, Any]:
    """``PUT /files/{key}`` of ``size`` bytes, streamed with a Content-Length; checks
    the answer (201, size, SHA-256) and returns its JSON. The payload's SHA-256 is
    cached per size: callers that time this compute it first."""
    headers = {"Content-Length": str(size), "Content-Type": "application/octet-stream"}
    url = f"{base_url}/files/{quote(key)}"
    async with session.put(url, data=payload.stream(size), headers=headers) as response:
        text = await response.text()
        if response.status != 201:
            raise BenchError(f"PUT {key}: HTTP {response.status}: {text[:500]}")
        info: dict[str, Any] = await response.json()
    if info.get("size") != size:
        raise BenchError(f"PUT {key}: the proxy stored {info.get('size')} bytes, not {size}")
    expected = await payload.sha256(size)
    if info.get("sha256") not in (None, expected):
        raise BenchError(f"PUT {key}: sha256 {info.get('sha256')} differs from the payload's {expected}")
    return info


async def proxy_delete(session: aiohttp.ClientSession, base_url: str, key: str) -> None:
    async with session.delete(f"{base_url}/files/{quote(key)}") as response:
        if response.status != 204:
            raise BenchError(f"DELETE {key}: HTTP {response.status}: {(await response.text())[:500]}")


async def direct_multipart_upload(
    client: Any, bucket: str, key: str, payload: Payload, size: int, *, part_size: int, concurrency: int
) -> None:
    """A plain multipart upload: parts of ``part_size`` with at most ``concurrency``
    in flight, each part's buffer made just before it is sent."""
    created = await client.create_multipart_upload(
        Bucket=bucket, Key=key, ContentType="application/octet-stream"
    )
    upload_id = created["UploadId"]
    slots = asyncio.Semaphore(concurrency)
    etags: dict[int, str] = {}

    async def send(number: int, data: bytes) -> None:
        try:
            response = await client.upload_part(
                Bucket=bucket,
                Key=key,
                UploadId=upload_id,
                PartNumber=number,
                Body=data,
                ContentLength=len(data),
            )
            etags[number] = response["ETag"]
        finally:
            slots.release()

    try:
        async with asyncio.TaskGroup() as group:
            for number, offset in enumerate(range(0, size, part_size), start=1):
                await slots.acquire()
                group.create_task(send(number, payload.slice(offset, min(part_size, size - offset))))
        parts = [{"PartNumber": n, "ETag": etags[n]} for n in sorted(etags)]
        await client.complete_multipart_upload(
            Bucket=bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts}
        )
    except BaseException:
        await asyncio.shield(client.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id))
        raise


def plain_file_write(path: Path, payload: Payload, size: int) -> None:
    """open, write 8 MiB blocks, fsync, close: the local disk's own speed."""
    with open(path, "wb") as fh:
        for block in payload.blocks(size):
            fh.write(block)
        fh.flush()
        os.fsync(fh.fileno())
