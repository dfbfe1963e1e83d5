"""One ``place`` per job store, for tests that hold every store to the same promises:
memory, the local directory, S3 on moto and S3 on Ceph RGW. ``place.open()`` opens
another store over the same jobs, as another process would, and ``place.entries()``
reads the queue entries straight from the directory or bucket."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from proxy.jobs.base import JobStore
from proxy.jobs.local import LocalJobStore
from proxy.jobs.memory import MemoryJobs, MemoryJobStore
from proxy.jobs.s3 import S3JobStore
from proxy.storage import layout
from proxy.storage.s3.objects import S3Storage
from tests.conftest import S3Endpoint, s3_config

STORES = ["memory", "local", "moto", pytest.param("rgw", marks=pytest.mark.real_s3)]
# Short, so that lapses take a moment; long enough for RGW's answers on a busy machine.
LEASE = 2.0


@dataclass
class Place:
    name: str
    opener: Callable[[float], Awaitable[JobStore]]
    entries: Callable[[], list[str]]
    add_entry: Callable[[str], None]  # a queue entry for a key, as a crash may leave one
    endpoint: S3Endpoint | None = None
    bucket: str | None = None
    root: Path | None = None
    _stores: list[JobStore] = field(default_factory=list)
    _storages: list[S3Storage] = field(default_factory=list)

    @property
    def s3(self) -> bool:
        return self.endpoint is not None

    async def open(self, lease: float = LEASE) -> JobStore:
        store = await self.opener(lease)
        await store.start()
        self._stores.append(store)
        return store

    async def close(self) -> None:
        for store in self._stores:
            await store.close()
        for storage in self._storages:
            await storage.close()


@pytest.fixture(params=STORES)
async def place(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Place]:
    name = request.param
    if name == "memory":
        shared = MemoryJobs()

        async def open_memory(lease: float) -> JobStore:
            return MemoryJobStore(shared, lease)

        made = Place(
            name, open_memory, lambda: sorted(shared.queue), lambda key: shared.queue.update({key: 0.0})
        )
    elif name == "local":
        root = tmp_path / "data"

        async def open_local(lease: float) -> JobStore:
            return LocalJobStore(root, lease)

        def local_entries() -> list[str]:
            queue = root / layout.JOB_QUEUE
            return sorted(os.listdir(queue)) if queue.exists() else []

        def local_add(key: str) -> None:
            (root / layout.job_queue_key(key)).write_bytes(b"")

        made = Place(name, open_local, local_entries, local_add, root=root)
    else:
        endpoint: S3Endpoint = request.getfixturevalue("moto_endpoint" if name == "moto" else "real_s3")
        bucket: str = request.getfixturevalue("moto_bucket" if name == "moto" else "real_bucket")
        client = endpoint.client()
        storages: list[S3Storage] = []

        async def open_s3(lease: float) -> JobStore:
            storage = S3Storage(s3_config(endpoint, bucket))
            await storage.start()
            storages.append(storage)
            return S3JobStore(storage, lease)

        def s3_entries() -> list[str]:
            listing = client.list_objects_v2(Bucket=bucket, Prefix=layout.JOB_QUEUE)
            return sorted(item["Key"].removeprefix(layout.JOB_QUEUE) for item in listing.get("Contents", []))

        def s3_add(key: str) -> None:
            client.put_object(Bucket=bucket, Key=layout.job_queue_key(key), Body=b"")

        made = Place(name, open_s3, s3_entries, s3_add, endpoint=endpoint, bucket=bucket, _storages=storages)
    try:
        yield made
    finally:
        await made.close()
