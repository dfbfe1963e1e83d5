"""Helpers of the S3 resumable upload tests: payloads, calls as the tus handler makes
them, and an S3Interposer in front of a server."""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import replace
from typing import Any

from aiohttp.test_utils import TestServer

from proxy.storage import layout
from proxy.storage.resumable import UploadBody, UploadState
from proxy.storage.s3.objects import S3Storage
from proxy.storage.s3.resumable.store import S3ResumableStore
from tests.conftest import MiB, S3Endpoint, s3_config
from tests.s3_interposer import S3Interposer

PART = 5 * MiB
SIX = 6 * MiB
MakeStore = Callable[..., Any]


def payload(size: int, seed: int = 0) -> bytes:
    block = hashlib.sha256(str(seed).encode()).digest() * 4096  # 128 KiB, not periodic in parts
    return (block * (size // len(block) + 1))[:size]


def chunks(data: bytes, size: int = 256 * 1024) -> Iterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


async def agen(it: Iterator[bytes]) -> AsyncIterator[bytes]:
    for chunk in it:
        yield chunk


def state_key(upload_id: str) -> str:
    return f"{layout.UPLOADS}{upload_id}/state.json"


async def append(store: S3ResumableStore, upload_id: str, data: bytes) -> UploadState:
    async with store.lock(upload_id) as state:
        return await store.append(state, UploadBody(agen(chunks(data)), state=state))


async def finish(store: S3ResumableStore, upload_id: str) -> Any:
    async with store.lock(upload_id) as state:
        assert state.complete
        return await store.finish(state)


@contextlib.asynccontextmanager
async def interposed(endpoint: S3Endpoint) -> AsyncIterator[tuple[S3Interposer, S3Endpoint]]:
    """An S3Interposer in front of ``endpoint``, and the endpoint that goes through it."""
    layer = S3Interposer(endpoint.url)
    server = TestServer(layer.app(), host="127.0.0.1")
    await server.start_server()
    try:
        yield layer, replace(endpoint, url=str(server.make_url("")).rstrip("/"))
    finally:
        await server.close()


def store_factory(opened: list[S3Storage], bucket: str) -> MakeStore:
    async def make(endpoint: S3Endpoint, *, lease: float = 30.0, **settings: Any) -> S3ResumableStore:
        storage = S3Storage(s3_config(endpoint, bucket, **{"part_size": PART, **settings}))
        await storage.start()
        opened.append(storage)
        store = S3ResumableStore(storage, lock_lease=lease)
        await store.start()
        return store

    return make


async def cut_off_body(data: bytes, cut: int, error: BaseException) -> AsyncIterator[bytes]:
    for chunk in chunks(data[:cut], 300_000):
        yield chunk
    raise error
