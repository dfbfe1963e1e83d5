"""Fixtures of the download tests, built once per test module.

- ``shared``: one proxy per backend (and one with the settings in CUSTOM) holding the
  objects the read-only tests ask for. The table-driven tests only read, so they share
  it (module scope, on a module-scoped event loop): starting an S3 client and a bucket
  per row would cost most of the runtime.
- ``s3_recorded``: a proxy on moto through a RecordingInterposer, with one object,
  its recorded calls cleared and its failure switches reset for each test.

Module scope gives each test module that uses them an instance of its own, so those
modules also run alone; their tests must be marked ``module_loop``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import replace

import pytest
import pytest_asyncio
from aiohttp.test_utils import TestServer

from proxy.config import Config, ServerConfig, StorageConfig
from tests.conftest import S3Endpoint, backend_for, make_bucket, s3_config
from tests.web.downloads_support import (
    CONTENT_TYPES,
    CUSTOM,
    LISTED,
    RANGE_KEYS,
    N,
    RecordingInterposer,
    S3Recorded,
    Shared,
    object_bytes,
    start_client,
    upload,
)


@pytest_asyncio.fixture(scope="module", loop_scope="module", params=["local", "s3"])
async def shared(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Shared]:
    tmp = tmp_path_factory.mktemp("downloads")
    bucket: Iterator[str] | None = None
    if request.param == "local":
        backend = backend_for("local", tmp, None, None)
    else:
        endpoint: S3Endpoint = request.getfixturevalue("moto_endpoint")
        bucket = make_bucket(endpoint)
        backend = backend_for("s3", tmp, endpoint, next(bucket))
    custom_config = replace(backend.config, server=replace(backend.config.server, **CUSTOM))
    setup = Shared(backend, await start_client(backend.config), await start_client(custom_config))
    try:
        uploads = [(key, object_bytes(size), "video/mp4") for size, key in RANGE_KEYS.items()]
        uploads += [(key, b"" if "empty" in key else b"0123456789", sent) for key, sent, _ in CONTENT_TYPES]
        uploads += [(key, object_bytes(7 * i + 1), ctype) for i, (key, ctype) in enumerate(LISTED.items())]
        for key, data, content_type in uploads:
            setup.data[key] = data
            setup.stored[key] = await upload(setup.client, key, data, content_type)
        yield setup
    finally:
        await setup.client.close()
        await setup.custom.close()
        if bucket is not None:
            next(bucket, None)  # empties and deletes the bucket


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def s3_recorded_module(moto_endpoint: S3Endpoint) -> AsyncIterator[S3Recorded]:
    layer = RecordingInterposer(moto_endpoint.url)
    server = TestServer(layer.app(), host="127.0.0.1")
    await server.start_server()
    bucket = make_bucket(moto_endpoint)
    endpoint = replace(moto_endpoint, url=str(server.make_url("")).rstrip("/"))
    storage = StorageConfig(backend="s3", s3=s3_config(endpoint, next(bucket)))
    client = await start_client(Config(ServerConfig(), storage))
    try:
        data = object_bytes(N)
        stored = await upload(client, "rec.mp4", data)
        yield S3Recorded(layer, client, data, stored["etag"])
    finally:
        await client.close()
        await server.close()
        next(bucket, None)


@pytest.fixture
def s3_recorded(s3_recorded_module: S3Recorded) -> Iterator[S3Recorded]:
    s3_recorded_module.layer.calls.clear()
    yield s3_recorded_module
    s3_recorded_module.layer.object_changes_after = None
    s3_recorded_module.layer.refuse_relayed = set()
