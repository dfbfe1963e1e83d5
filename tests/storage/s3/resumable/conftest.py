"""Fixtures of the S3 resumable upload tests (proxy/storage/s3/resumable/), against moto.

Every store gets its own S3Storage, as a separate proxy process would; faults and
stalls are injected at the HTTP level by an S3Interposer in front of moto.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from proxy.storage.s3.objects import S3Storage
from tests.conftest import S3Endpoint, S3View
from tests.s3_interposer import S3Interposer
from tests.storage.s3.resumable.support import MakeStore, interposed, store_factory


@pytest.fixture
async def interposer(moto_endpoint: S3Endpoint) -> AsyncIterator[tuple[S3Interposer, S3Endpoint]]:
    async with interposed(moto_endpoint) as pair:
        yield pair


@pytest.fixture
async def opened() -> AsyncIterator[list[S3Storage]]:
    storages: list[S3Storage] = []
    yield storages
    for storage in storages:
        await storage.close()


@pytest.fixture
def make_store(opened: list[S3Storage], moto_bucket: str) -> MakeStore:
    return store_factory(opened, moto_bucket)


@pytest.fixture
def view(moto_endpoint: S3Endpoint, moto_bucket: str) -> S3View:
    return S3View(moto_endpoint, moto_bucket)
