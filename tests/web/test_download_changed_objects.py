"""Objects that change while the proxy serves them: between the decision and the read
(on S3 the GetObject's If-Match fails; locally the file is replaced), between two
ranges of one answer, and between two requests by another writer. A download is then
visibly broken or of the new object, never a complete-looking mix."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any, BinaryIO

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer

from proxy.app import create_app
from proxy.config import Config, LocalConfig, ServerConfig, StorageConfig
from proxy.storage import backend as storage_backend
from proxy.storage.base import ObjectInfo
from proxy.storage.local.objects import LocalStorage
from proxy.storage.local.resumable import LocalResumableStore
from tests.conftest import Backend, MiB
from tests.net import TcpTap
from tests.web.downloads_support import (
    TIMEOUT,
    N,
    Raw,
    S3Recorded,
    assert_framed,
    assert_json_error,
    body_of,
    module_loop,
    object_bytes,
    parse_byteranges,
    raw,
    start_client,
    upload,
)

# -- the object changes between the decision and the read ----------------------------------------------

BROKEN_READS = [{}, {"Range": "bytes=10-19"}, {"Range": "bytes=0-1,5-6"}]


def expected_body(headers: dict[str, str], data: bytes) -> list[bytes]:
    """The body (or multipart parts) a GET with one of BROKEN_READS should give."""
    return {"": [data], "bytes=10-19": [data[10:20]], "bytes=0-1,5-6": [data[0:2], data[5:7]]}[
        headers.get("Range", "")
    ]


async def assert_never_served_as_complete(
    client: TestClient[Any, Any], path: str, headers: dict[str, str], data: bytes, arm: Callable[[], None]
) -> None:
    """The read fails after the response head may have gone out. Then the client must
    see the body end short of its Content-Length (a broken download), never a complete
    looking response with other bytes in it."""
    arm()
    r = await raw(client, "GET", path, headers)
    if r.status in (200, 206) and len(r.body) == int(r.headers["Content-Length"]):
        assert body_of(r) == expected_body(headers, data), r.body[:300]  # complete: must be right
    elif r.status in (200, 206):
        assert len(r.body) < int(r.headers["Content-Length"]), r.body[:300]
        if "multipart" in r.headers["Content-Type"]:
            # Only what precedes the failed read got out.
            assert b"HTTP/1.1" not in r.body and b"error" not in r.body, r.body[:300]
        else:
            assert expected_body(headers, data)[0].startswith(r.body), r.body[:300]
    else:
        assert r.status in (404, 412, 502), r.status
    # A keep-alive client reads exactly Content-Length bytes and then trusts them.
    arm()
    with contextlib.suppress(aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError):
        async with asyncio.timeout(TIMEOUT):
            response = await client.get(path, headers=headers)
            body = await response.read()
            if response.status in (200, 206):
                complete = Raw(response.status, response.headers.copy(), body)
                assert body_of(complete) == expected_body(headers, data), body[:300]


@module_loop
@pytest.mark.parametrize("headers", BROKEN_READS, ids=["whole", "range", "multipart"])
async def test_s3_object_changed_after_head_is_not_served_as_complete(
    s3_recorded: S3Recorded, headers: dict[str, str]
) -> None:
    # The GetObject's If-Match fails: the object changed after the HeadObject. With
    # several ranges, it changes after the first part was read.
    first_ok = 1 if "," in headers.get("Range", "") else 0

    def arm() -> None:
        s3_recorded.layer.object_changes_after = first_ok

    await assert_never_served_as_complete(
        s3_recorded.client, "/files/rec.mp4", headers, s3_recorded.data, arm
    )
    s3_recorded.layer.object_changes_after = None
    r = await raw(s3_recorded.client, "GET", "/files/rec.mp4", {"Range": "bytes=0-1"})
    assert r.status == 206 and r.body == s3_recorded.data[:2]


@pytest.mark.real_s3
async def test_real_s3_object_replaced_between_ranges_is_never_spliced(real_backend: Backend) -> None:
    # RGW itself refuses the second range's If-Match: the object changed in between.
    view: Any = real_backend.view
    s3 = real_backend.config.storage.s3
    assert s3.endpoint_url
    tap = TcpTap(s3.endpoint_url)
    await tap.start()
    config = replace(
        real_backend.config,
        storage=replace(real_backend.config.storage, s3=replace(s3, endpoint_url=tap.url)),
    )
    client = await start_client(config)
    old, new = object_bytes(2 * MiB), object_bytes(2 * MiB)
    second = f"bytes={MiB}-{MiB + 9}".encode()

    async def replace_before_second_range(request: bytes) -> None:
        if request.startswith(b"GET ") and b"Range: " + second + b"\r\n" in request:
            tap.before_sending = None
            await asyncio.to_thread(view.client.put_object, Bucket=view.bucket, Key="v.mp4", Body=new)

    try:
        await upload(client, "v.mp4", old)
        tap.before_sending = replace_before_second_range
        r = await raw(client, "GET", "/files/v.mp4", {"Range": f"bytes=0-9,{MiB}-{MiB + 9},-10"})
        assert r.status == 206
        assert len(r.body) < int(r.headers["Content-Length"])  # cut short, visibly
        assert old[:10] in r.body
        for piece in (new[:10], new[MiB : MiB + 10], new[-10:], old[MiB : MiB + 10], old[-10:]):
            assert piece not in r.body
        r = await raw(client, "GET", "/files/v.mp4", {"Range": f"bytes=0-9,{MiB}-{MiB + 9},-10"})
        assert [part for _, part in parse_byteranges(r)] == [new[:10], new[MiB : MiB + 10], new[-10:]]
    finally:
        await client.close()
        await tap.close()


class ReplacedBeforeRead(LocalStorage):
    """Another upload replaces the object (same bytes, new file) between the handler's
    open and its read, once armed: the version opened is the one described and sent."""

    armed = False

    async def open_object(self, key: str) -> tuple[ObjectInfo, BinaryIO]:
        opened = await super().open_object(key)
        if self.armed:
            path = self.paths.object(key)
            copy = path.with_name(path.name + ".replacement")
            shutil.copyfile(path, copy)
            os.replace(copy, path)
        return opened


@pytest.mark.parametrize("headers", BROKEN_READS, ids=["whole", "range", "multipart"])
async def test_local_object_replaced_before_read_is_not_served_as_complete(
    tmp_path: Path, headers: dict[str, str]
) -> None:
    storage = ReplacedBeforeRead(tmp_path / "data")
    config = Config(ServerConfig(), StorageConfig(backend="local", local=LocalConfig(tmp_path / "data")))
    backend = storage_backend.Backend(storage, LocalResumableStore(storage))
    client: TestClient[Any, Any] = TestClient(TestServer(create_app(config, backend), host="127.0.0.1"))
    await client.start_server()
    try:
        data = object_bytes(N)
        await upload(client, "v.mp4", data)

        def arm() -> None:
            storage.armed = True

        await assert_never_served_as_complete(client, "/files/v.mp4", headers, data, arm)
        storage.armed = False
        r = await raw(client, "GET", "/files/v.mp4", {"Range": "bytes=0-1"})
        assert r.status == 206 and r.body == data[:2]
    finally:
        await client.close()


# -- objects changed by another writer (another proxy instance, another S3 client, ...) ---------------


def write_externally(backend: Backend, key: str, data: bytes | None) -> None:
    """Replace (or with None, delete) the object without going through this proxy."""
    if backend.name == "local":
        path = backend.config.storage.local.root / key
        if data is None:
            path.unlink()
            return
        fresh = path.with_name(path.name + ".external")
        fresh.write_bytes(data)
        os.replace(fresh, path)
        return
    view: Any = backend.view
    if data is None:
        view.client.delete_object(Bucket=view.bucket, Key=key)
    else:
        view.client.put_object(Bucket=view.bucket, Key=key, Body=data, ContentType="video/mp4")


@pytest.mark.parametrize(
    ("old_size", "new_size", "headers"),
    [
        (0, N, {}),  # an empty object: nothing is read, so nothing checks the validators
        (0, None, {}),  # deleted
        (N, 3 * N, {"Range": "bytes=2000-2009"}),  # past the old end: unsatisfiable before
        (N, 3 * N, {}),
        (N, None, {"Range": "bytes=0-1"}),
    ],
    ids=["empty-then-filled", "empty-then-deleted", "range-past-old-end", "whole", "deleted"],
)
async def test_objects_changed_by_another_writer_are_seen(
    backend: Backend, proxy_client: Any, old_size: int, new_size: int | None, headers: dict[str, str]
) -> None:
    client = await proxy_client(backend.config)
    old = object_bytes(old_size)
    await upload(client, "shared.mp4", old)
    before = await raw(client, "GET", "/files/shared.mp4", headers)
    assert before.status in (200, 206, 416)
    write_externally(backend, "shared.mp4", None if new_size is None else object_bytes(new_size))
    new = None if new_size is None else (await asyncio.to_thread(backend.view.get, "shared.mp4"))
    r = await raw(client, "GET", "/files/shared.mp4", headers)
    if new is None:
        assert_json_error(r, 404, "not_found")
        return
    assert_framed(r)
    if headers:
        assert r.status == 206, (r.status, r.headers)
        assert r.body == new[2000:2010]
    else:
        assert r.status == 200, (r.status, r.headers)
        assert r.body == new
    assert r.headers["Content-Length"] == str(len(r.body))
    if "ETag" in before.headers:
        assert r.headers["ETag"] != before.headers["ETag"]
