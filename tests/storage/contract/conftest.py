"""One ``subject`` per backend, for tests that hold every backend to the same promises.

The subject is a started Backend (objects and resumable uploads) built the way the
application builds it: the local directory, S3 on moto, S3 on Ceph RGW, and the
in-memory fake of tests/storage/memory.py. ``another()`` opens a second Backend over
the same directory, bucket or MemoryStorage, as a second proxy process would, and
``leftovers()`` reads what unfinished work left behind without going through the
backend (tests/conftest.py's views).
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest

from proxy.config import Config, LocalConfig, StorageConfig
from proxy.storage import layout, local, s3
from proxy.storage.backend import Backend
from proxy.storage.base import ObjectInfo, Storage
from proxy.storage.resumable import ResumableStore, UploadBody, UploadState
from tests.conftest import LocalView, MiB, S3Endpoint, S3View, s3_config
from tests.storage.memory import MemoryStorage, memory_backend

# The S3 part size of the contract's S3 backends, S3's smallest: sizes around it
# cover both a single PutObject and a multipart upload in a few MiB.
PART = 5 * MiB
BACKENDS = ["local", "moto", pytest.param("rgw", marks=pytest.mark.real_s3), "memory"]


@dataclass
class Subject:
    name: str
    backend: Backend
    leftovers: Callable[[], list[str]]
    _open: Callable[[], Backend]
    _opened: list[Backend] = field(default_factory=list)

    @property
    def objects(self) -> Storage:
        return self.backend.objects

    @property
    def uploads(self) -> ResumableStore:
        return self.backend.uploads

    async def another(self) -> Backend:
        """A second backend over the same storage, as another process has it."""
        backend = self._open()
        await backend.start()
        self._opened.append(backend)
        return backend

    async def close(self) -> None:
        # Closing twice is harmless, so a test may close one early (a restart).
        for backend in reversed(self._opened):
            await backend.close()


def memory_leftovers(storage: MemoryStorage) -> list[str]:
    """As the views name them: each resumable upload once, any other own file by key."""
    found = set()
    for key in storage.stored_keys():
        if key.startswith(layout.UPLOADS):
            found.add(f"upload {key.split('/')[2]}")
        elif layout.is_internal(key):
            found.add(key)
    return sorted(found)


def _opener(
    request: pytest.FixtureRequest, tmp_path: Path
) -> tuple[Callable[[], Backend], Callable[[], list[str]]]:
    name = request.param
    if name == "local":
        root = tmp_path / "data"
        config = Config(storage=StorageConfig(backend="local", local=LocalConfig(root=root)))
        return lambda: local.build(config), LocalView(root).leftovers
    if name in ("moto", "rgw"):
        endpoint: S3Endpoint = request.getfixturevalue("moto_endpoint" if name == "moto" else "real_s3")
        bucket: str = request.getfixturevalue("moto_bucket" if name == "moto" else "real_bucket")
        config = Config(storage=StorageConfig(backend="s3", s3=s3_config(endpoint, bucket, part_size=PART)))
        return lambda: s3.build(config), S3View(endpoint, bucket).leftovers
    shared = MemoryStorage()
    return lambda: memory_backend(shared), lambda: memory_leftovers(shared)


@pytest.fixture(params=BACKENDS)
async def subject(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Subject]:
    open_backend, leftovers = _opener(request, tmp_path)
    backend = open_backend()
    subject = Subject(request.param, backend, leftovers, open_backend, [backend])
    await backend.start()
    try:
        yield subject
    finally:
        await subject.close()


# -- bytes and bodies -----------------------------------------------------------------


def payload(size: int, seed: int = 0) -> bytes:
    # Random, not periodic: a byte in the wrong place (a part or block out of order,
    # a range off by one) cannot look right.
    return random.Random(seed).randbytes(size)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def pieces(data: bytes, size: int = 64 * 1024 + 1) -> Iterator[bytes]:
    """``data`` in network-sized chunks of an odd size."""
    for start in range(0, len(data), size):
        yield data[start : start + size]


def split(data: bytes, sizes: list[int]) -> list[bytes]:
    out, start = [], 0
    for size in sizes:
        out.append(data[start : start + size])
        start += size
    assert start == len(data)
    return out


async def body_of(chunks: Iterable[bytes]) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk


async def cut_off(chunks: Iterable[bytes], error: BaseException) -> AsyncIterator[bytes]:
    """A body that gives ``chunks`` and then fails, as a client that goes away."""
    for chunk in chunks:
        yield chunk
    raise error


# -- calls as the handlers make them ------------------------------------------------------


async def write(
    objects: Storage, key: str, data: bytes, *, content_type: str | None = "video/mp4", **options: Any
) -> ObjectInfo:
    return await objects.write(key, body_of(pieces(data)), content_type=content_type, **options)


async def read(objects: Storage, key: str, start: int = 0, end: int | None = None, **options: Any) -> bytes:
    return b"".join([chunk async for chunk in objects.read(key, start, end, **options)])


async def listed(objects: Storage, prefix: str = "", limit: int = 1000) -> list[ObjectInfo]:
    """Every object under ``prefix``, page after page."""
    found: list[ObjectInfo] = []
    cursor = None
    while True:
        page = await objects.list(prefix, limit, cursor)
        assert len(page.objects) <= limit
        # Each page goes on past the cursor, so paging ends.
        assert cursor is None or all(o.key > cursor for o in page.objects)
        found += page.objects
        if page.next_cursor is None:
            return found
        assert page.next_cursor == page.objects[-1].key
        cursor = page.next_cursor


async def append(
    uploads: ResumableStore, upload_id: str, body: AsyncIterator[bytes], **options: Any
) -> UploadState:
    async with uploads.lock(upload_id) as state:
        return await uploads.append(state, UploadBody(body, state=state, **options))


async def finish(uploads: ResumableStore, upload_id: str) -> ObjectInfo:
    async with uploads.lock(upload_id) as state:
        assert state.complete
        return await uploads.finish(state)


def public(state: UploadState) -> UploadState:
    """A state as the handler reads it: ``backend`` is the backend's own (S3 keeps its
    lease there), and ``version`` is never compared."""
    return replace(state, backend={})
