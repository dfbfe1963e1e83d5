"""Many downloads of one object at once, some reading slowly, on both backends and
the real S3 server, with fewer S3 connections than downloads."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any

import aiohttp
import pytest

from tests.conftest import Backend, MiB
from tests.web.downloads_support import (
    Raw,
    expected_body_of,
    object_bytes,
    parse_byteranges,
    upload,
)

CONCURRENT = 24


async def fetch(session: aiohttp.ClientSession, path: str, header: dict[str, str], *, slowly: bool) -> bytes:
    """A download read in 64 KiB pieces; ``slowly`` pauses after each, so that its
    relay waits on the client while the others run."""
    async with session.get(path, headers=header) as response:
        assert response.status == (206 if header else 200)
        body = bytearray()
        async for piece in response.content.iter_chunked(64 * 1024):
            body += piece
            if slowly:
                await asyncio.sleep(0.002)
        if "multipart/byteranges" in response.headers["Content-Type"]:
            return b"".join(
                part
                for _, part in parse_byteranges(Raw(response.status, response.headers.copy(), bytes(body)))
            )
        return bytes(body)


async def check_many_downloads_at_once(backend: Backend, proxy_client: Any) -> None:
    config = backend.config
    if config.storage.backend == "s3":
        # Fewer relay connections (and threads) than downloads: some wait for a slot.
        s3 = replace(config.storage.s3, max_pool_connections=4)
        config = replace(config, storage=replace(config.storage, s3=s3))
    client = await proxy_client(config)
    data = object_bytes(8 * MiB + 7)
    await upload(client, "many.bin", data, "application/octet-stream")
    size = len(data)
    headers = [
        {},
        {"Range": "bytes=0-"},
        {"Range": f"bytes={size // 3}-{size // 2}"},
        {"Range": "bytes=-1000000"},
        {"Range": f"bytes=10-19,{size - 5}-,{MiB}-{2 * MiB}"},
        {"Range": "bytes=0-1"},
    ]
    jobs = [(headers[i % len(headers)], i % 2 == 1) for i in range(CONCURRENT)]
    async with aiohttp.ClientSession(str(client.make_url(""))) as session:
        async with asyncio.timeout(60):
            downloads = [asyncio.create_task(fetch(session, "/files/many.bin", h, slowly=s)) for h, s in jobs]
            # The server answers other requests meanwhile.
            async with session.head("/files/many.bin") as response:
                assert response.status == 200 and response.content_length == size
            assert not all(d.done() for d in downloads)
            bodies = await asyncio.gather(*downloads)
    for (header, _), body in zip(jobs, bodies, strict=True):
        assert body == b"".join(expected_body_of(header, data)), header


async def test_many_downloads_at_once(backend: Backend, proxy_client: Any) -> None:
    await check_many_downloads_at_once(backend, proxy_client)


@pytest.mark.real_s3
async def test_many_downloads_at_once_real_s3(real_backend: Backend, proxy_client: Any) -> None:
    await check_many_downloads_at_once(real_backend, proxy_client)
