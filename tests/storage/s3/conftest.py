"""Fixtures of the S3 storage tests: moto behind a recording, fault-injecting layer
(tests/s3_interposer.py), storages that talk to it, and a view of the bucket."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from typing import Any

import pytest
from aiohttp.test_utils import TestServer

from proxy.storage.s3.objects import S3Storage
from tests.conftest import MiB, S3Endpoint, S3View, s3_config
from tests.s3_interposer import S3Interposer

PART = 5 * MiB


@pytest.fixture
async def interposer(moto_endpoint: S3Endpoint) -> AsyncIterator[tuple[S3Interposer, S3Endpoint]]:
    layer = S3Interposer(moto_endpoint.url, part_delay=0.05)
    server = TestServer(layer.app(), host="127.0.0.1")
    await server.start_server()
    yield layer, replace(moto_endpoint, url=str(server.make_url("")).rstrip("/"))
    await server.close()


@pytest.fixture
async def make_storage(
    interposer: tuple[S3Interposer, S3Endpoint], moto_bucket: str
) -> AsyncIterator[Callable[..., Any]]:
    opened: list[S3Storage] = []

    async def make(**overrides: Any) -> S3Storage:
        settings = {"part_size": PART, "max_concurrency": 3, **overrides}
        storage = S3Storage(s3_config(interposer[1], moto_bucket, **settings))
        await storage.start()
        opened.append(storage)
        return storage

    yield make
    for storage in opened:
        await storage.close()


@pytest.fixture
def view(moto_endpoint: S3Endpoint, moto_bucket: str) -> S3View:
    return S3View(moto_endpoint, moto_bucket)
