"""The tus 1.0.0 protocol at /uploads/, case by case, on both backends."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import re
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

import pytest

from proxy.config import ByteSize, Config, ServerConfig
from proxy.storage.expiry import sweep
from proxy.web.settings import UPLOADS
from tests.conftest import Backend, MiB, wait_until

TUS = {"Tus-Resumable": "1.0.0"}
OCTET = {**TUS, "Content-Type": "application/offset+octet-stream"}


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def with_tus(config: Config, **settings: Any) -> Config:
    return replace(config, tus=replace(config.tus, **settings))


async def create(client: Any, length: int | None, filename: str | None = "clip.mp4", **headers: str) -> str:
    sent = {**TUS, **headers}
    if length is None:
        sent["Upload-Defer-Length"] = "1"
    else:
        sent["Upload-Length"] = str(length)
    if filename is not None:
        sent.setdefault("Upload-Metadata", f"filename {b64(filename)},filetype {b64('video/mp4')}")
    response = await client.post("/uploads/", headers=sent)
    assert response.status == 201, await response.text()
    location: str = response.headers["Location"]
    assert re.fullmatch(r"/uploads/[0-9a-f]{32}", location)
    return location


async def patch(client: Any, location: str, offset: int, data: bytes, **headers: str) -> Any:
    return await client.patch(location, data=data, headers={**OCTET, "Upload-Offset": str(offset), **headers})


async def offset_of(client: Any, location: str) -> int:
    response = await client.head(location, headers=TUS)
    assert response.status == 200
    return int(response.headers["Upload-Offset"])


def object_key(location: str, filename: str = "clip.mp4") -> str:
    return f"{location.rsplit('/', 1)[1]}/{filename}"


async def test_options_advertises_the_protocol(http_backend: Backend, proxy_client: Any) -> None:
    client = await proxy_client(http_backend.config, http_backend.app_backend)
    response = await client.options("/uploads/")
    assert response.status == 204
    assert response.headers["Tus-Version"] == "1.0.0"
    extensions = response.headers["Tus-Extension"].split(",")
    for name in (
        "creation",
        "creation-with-upload",
        "creation-defer-length",
        "termination",
        "expiration",
        "checksum",
    ):
        assert name in extensions
    assert "sha1" in response.headers["Tus-Checksum-Algorithm"].split(",")
    assert "Tus-Max-Size" not in response.headers


async def test_max_size_is_advertised_and_enforced(backend: Backend, proxy_client: Any) -> None:
    config = replace(backend.config, server=ServerConfig(max_upload_bytes=ByteSize(1000)))
    client = await proxy_client(config)
    assert (await client.options("/uploads/")).headers["Tus-Max-Size"] == "1000"
    response = await client.post("/uploads/", headers={**TUS, "Upload-Length": "1001"})
    assert response.status == 413
    assert response.headers["Tus-Resumable"] == "1.0.0"
    assert (await response.json())["error"] == "too_large"
    location = await create(client, None)
    response = await patch(client, location, 0, b"x" * 1001)
    assert response.status == 413
    assert await offset_of(client, location) == 0


@pytest.mark.parametrize("version", [None, "0.2.2", "1.0", ""])
async def test_unsupported_version_is_412(
    http_backend: Backend, proxy_client: Any, version: str | None
) -> None:
    client = await proxy_client(http_backend.config, http_backend.app_backend)
    headers = (
        {"Upload-Length": "10"} if version is None else {"Tus-Resumable": version, "Upload-Length": "10"}
    )
    response = await client.post("/uploads/", headers=headers)
    assert response.status == 412
    assert response.headers["Tus-Version"] == "1.0.0"
    assert (await response.json())["error"] == "unsupported_version"
    assert http_backend.view.leftovers() == []


async def test_create_head_patch_finish(backend: Backend, proxy_client: Any) -> None:
    client = await proxy_client(backend.config)
    data = bytes(range(256)) * 4000 + b"tail"
    metadata = f"filename {b64('clip.mp4')},filetype {b64('video/mp4')},flag"
    location = await create(client, len(data), **{"Upload-Metadata": metadata})

    head = await client.head(location, headers=TUS)
    assert head.status == 200
    assert head.headers["Upload-Offset"] == "0"
    assert head.headers["Upload-Length"] == str(len(data))
    assert head.headers["Upload-Metadata"] == metadata
    assert head.headers["Cache-Control"] == "no-store"
    assert head.headers["Tus-Resumable"] == "1.0.0"
    assert "GMT" in head.headers["Upload-Expires"]

    offset = 0
    for size in (1, 100_000, 333_333):
        response = await patch(client, location, offset, data[offset : offset + size])
        assert response.status == 204, await response.text()
        offset += size
        assert response.headers["Upload-Offset"] == str(offset)
        assert response.headers["Tus-Resumable"] == "1.0.0"
        assert "Upload-Expires" in response.headers
        assert await offset_of(client, location) == offset
    assert backend.view.keys() == []  # nothing is visible before the last byte

    response = await patch(client, location, offset, data[offset:])
    assert response.status == 204
    key = object_key(location)
    assert response.headers["Object-Location"] == f"/files/{key}"
    assert backend.view.keys() == [key]
    assert backend.view.get(key) == data
    meta = backend.view.metadata(key)
    assert meta["sha256"] == hashlib.sha256(data).hexdigest()
    assert meta["content_type"] == "video/mp4"
    download = await client.get(f"/files/{key}", headers={"Range": "bytes=10-19"})
    assert download.status == 206 and await download.read() == data[10:20]

    # The finished upload still answers HEAD, as clients check before resuming.
    head = await client.head(location, headers=TUS)
    assert head.headers["Upload-Offset"] == head.headers["Upload-Length"] == str(len(data))
    assert backend.view.leftovers() in ([], [f"upload {location.rsplit('/', 1)[1]}"])


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({}, 400),
        ({"Upload-Length": "10", "Upload-Defer-Length": "1"}, 400),
        ({"Upload-Length": "-1"}, 400),
        ({"Upload-Length": "ten"}, 400),
        ({"Upload-Defer-Length": "0"}, 400),
        ({"Upload-Length": "10", "Upload-Metadata": "filename not*base64"}, 400),
        ({"Upload-Length": "10", "Upload-Metadata": "a YQ==,a YQ=="}, 400),
    ],
)
async def test_bad_creation_headers(
    http_backend: Backend, proxy_client: Any, headers: dict[str, str], status: int
) -> None:
    client = await proxy_client(http_backend.config, http_backend.app_backend)
    response = await client.post("/uploads/", headers={**TUS, **headers})
    assert response.status == status
    body = await response.json()
    assert set(body) >= {"error", "message"}
    assert response.headers["Tus-Resumable"] == "1.0.0"
    assert http_backend.view.leftovers() == []


async def test_patch_errors(http_backend: Backend, proxy_client: Any) -> None:
    client = await proxy_client(http_backend.config, http_backend.app_backend)
    location = await create(client, 10)
    assert (await patch(client, location, 0, b"abc")).status == 204

    cases: list[tuple[dict[str, str], bytes, int, str]] = [
        ({"Content-Type": "application/octet-stream"}, b"de", 415, "unsupported_media_type"),
        ({"Upload-Offset": "0"}, b"de", 409, "offset_mismatch"),
        ({"Upload-Offset": "5"}, b"de", 409, "offset_mismatch"),
        ({"Upload-Offset": "x"}, b"de", 400, "invalid_header"),
        ({"Upload-Offset": "3"}, b"d" * 8, 413, "too_large"),
        ({"Upload-Offset": "3", "Upload-Checksum": "crc32 AAAA"}, b"de", 400, "invalid_header"),
        ({"Upload-Offset": "3", "Upload-Length": "12"}, b"de", 400, "invalid_header"),
    ]
    for headers, data, status, error in cases:
        response = await client.patch(location, data=data, headers={**OCTET, "Upload-Offset": "3", **headers})
        assert response.status == status, (headers, await response.text())
        assert (await response.json())["error"] == error
        assert response.headers["Tus-Resumable"] == "1.0.0"
        assert await offset_of(client, location) == 3

    response = await client.patch(location, data=b"de", headers={"Content-Type": OCTET["Content-Type"]})
    assert response.status == 412
    missing = await client.patch(location, data=b"de", headers=OCTET)
    assert missing.status == 400


@pytest.mark.parametrize(
    "path", ["/uploads/0123456789abcdef0123456789abcdef", "/uploads/..%2F..%2Fetc", "/uploads/x"]
)
async def test_unknown_upload_is_404(http_backend: Backend, proxy_client: Any, path: str) -> None:
    client = await proxy_client(http_backend.config, http_backend.app_backend)
    for method in ("HEAD", "PATCH", "DELETE"):
        response = await client.request(method, path, headers={**OCTET, "Upload-Offset": "0"})
        assert response.status == 404, method
        assert response.headers["Tus-Resumable"] == "1.0.0"


@pytest.mark.parametrize("algorithm", ["sha1", "sha256", "md5"])
async def test_checksum(backend: Backend, proxy_client: Any, algorithm: str) -> None:
    client = await proxy_client(backend.config)
    location = await create(client, 6)
    good = base64.b64encode(hashlib.new(algorithm, b"abc").digest()).decode()
    bad = base64.b64encode(hashlib.new(algorithm, b"abd").digest()).decode()
    response = await patch(client, location, 0, b"abc", **{"Upload-Checksum": f"{algorithm} {bad}"})
    assert response.status == 460
    assert (await response.json())["error"] == "checksum_mismatch"
    assert await offset_of(client, location) == 0
    response = await patch(client, location, 0, b"abc", **{"Upload-Checksum": f"{algorithm} {good}"})
    assert response.status == 204 and response.headers["Upload-Offset"] == "3"
    response = await patch(client, location, 3, b"def")
    assert response.status == 204
    assert backend.view.get(object_key(location)) == b"abcdef"


async def test_deferred_length(backend: Backend, proxy_client: Any) -> None:
    client = await proxy_client(backend.config)
    location = await create(client, None)
    head = await client.head(location, headers=TUS)
    assert head.headers["Upload-Defer-Length"] == "1"
    assert "Upload-Length" not in head.headers
    assert (await patch(client, location, 0, b"hello ")).status == 204
    response = await patch(client, location, 6, b"world", **{"Upload-Length": "11"})
    assert response.status == 204
    assert backend.view.get(object_key(location)) == b"hello world"
    head = await client.head(location, headers=TUS)
    assert head.headers["Upload-Length"] == "11"


async def test_length_declared_by_an_empty_patch(backend: Backend, proxy_client: Any) -> None:
    client = await proxy_client(backend.config)
    location = await create(client, None)
    assert (await patch(client, location, 0, b"abc")).status == 204
    response = await patch(client, location, 3, b"", **{"Upload-Length": "3"})
    assert response.status == 204
    assert backend.view.get(object_key(location)) == b"abc"


async def test_creation_with_upload(backend: Backend, proxy_client: Any) -> None:
    client = await proxy_client(backend.config)
    headers = {**OCTET, "Upload-Length": "10", "Upload-Metadata": f"filename {b64('a.bin')}"}
    response = await client.post("/uploads/", data=b"01234", headers=headers)
    assert response.status == 201
    assert response.headers["Upload-Offset"] == "5"
    location = response.headers["Location"]
    assert (await patch(client, location, 5, b"56789")).status == 204
    assert backend.view.get(object_key(location, "a.bin")) == b"0123456789"

    whole = await client.post("/uploads/", data=b"xyz", headers={**OCTET, "Upload-Length": "3"})
    assert whole.status == 201 and whole.headers["Upload-Offset"] == "3"
    upload_id = whole.headers["Location"].rsplit("/", 1)[1]
    assert backend.view.get(f"{upload_id}/{upload_id}") == b"xyz"  # no filename: the id stands in


async def test_creation_with_upload_needs_the_tus_content_type(backend: Backend, proxy_client: Any) -> None:
    client = await proxy_client(backend.config)
    response = await client.post("/uploads/", data=b"xyz", headers={**TUS, "Upload-Length": "3"})
    assert response.status == 415
    assert backend.view.leftovers() == []


async def test_empty_upload_is_finished_at_creation(backend: Backend, proxy_client: Any) -> None:
    client = await proxy_client(backend.config)
    location = await create(client, 0, "empty.txt")
    assert backend.view.get(object_key(location, "empty.txt")) == b""
    assert backend.view.metadata(object_key(location, "empty.txt"))["sha256"] == hashlib.sha256().hexdigest()


async def test_filename_is_reduced_to_one_safe_segment(backend: Backend, proxy_client: Any) -> None:
    client = await proxy_client(backend.config)
    location = await create(client, 1, "../../etc/C:\\evil\npasswd")
    assert (await patch(client, location, 0, b"x")).status == 204
    assert backend.view.keys() == [object_key(location, "evilpasswd")]


async def test_key_template(backend: Backend, proxy_client: Any) -> None:
    client = await proxy_client(with_tus(backend.config, key_template="videos/{filename}"))
    location = await create(client, 2, "a.mp4")
    assert (await patch(client, location, 0, b"ab")).status == 204
    assert backend.view.keys() == ["videos/a.mp4"]


async def test_termination_leaves_nothing(backend: Backend, proxy_client: Any) -> None:
    client = await proxy_client(replace(backend.config, storage=_small_parts(backend)))
    location = await create(client, 20 * MiB)
    assert (await patch(client, location, 0, b"x" * (7 * MiB + 5))).status == 204
    assert backend.view.leftovers() != []
    response = await client.delete(location, headers=TUS)
    assert response.status == 204
    assert response.headers["Tus-Resumable"] == "1.0.0"
    assert backend.view.leftovers() == []
    assert backend.view.keys() == []
    assert (await client.head(location, headers=TUS)).status == 404
    assert (await client.delete(location, headers=TUS)).status == 404


def _small_parts(backend: Backend) -> Any:
    storage = backend.config.storage
    return replace(storage, s3=replace(storage.s3, part_size=ByteSize(5 * MiB)))


async def test_expired_uploads_are_refused_and_swept(backend: Backend, proxy_client: Any) -> None:
    client = await proxy_client(with_tus(backend.config, expiration=1.0))
    location = await create(client, 20 * MiB)
    assert (await patch(client, location, 0, b"x" * (6 * MiB + 1))).status == 204
    done = await create(client, 1)
    assert (await patch(client, done, 0, b"y")).status == 204
    await asyncio.sleep(1.1)
    for method in ("HEAD", "PATCH"):
        response = await client.request(
            method, location, headers={**OCTET, "Upload-Offset": str(6 * MiB + 1)}
        )
        assert response.status == 410, method
    assert await sweep(client.app[UPLOADS]) == 2
    assert backend.view.leftovers() == []
    assert backend.view.keys() == [object_key(done)]  # the finished object stays
    assert (await client.head(location, headers=TUS)).status == 404


async def test_the_server_sweeps_by_itself(backend: Backend, proxy_client: Any) -> None:
    client = await proxy_client(with_tus(backend.config, expiration=0.5, sweep_interval=0.2))
    await create(client, 100)
    await wait_until(lambda: backend.view.leftovers() == [], seconds=10)


async def open_patch(
    host: str, port: int, location: str, offset: int, length: int, first: bytes
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A PATCH of ``length`` bytes sent over a raw socket, stopped after ``first``: the
    handler holds the upload until the rest comes."""
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(
        f"PATCH {location} HTTP/1.1\r\nHost: x\r\nTus-Resumable: 1.0.0\r\n"
        f"Content-Type: application/offset+octet-stream\r\nUpload-Offset: {offset}\r\n"
        f"Content-Length: {length}\r\n\r\n".encode()
        + first
    )
    await writer.drain()
    return reader, writer


async def status_of(reader: asyncio.StreamReader) -> int:
    """The status code of the answer to a raw request."""
    async with asyncio.timeout(30):
        return int((await reader.readline()).split()[1])


async def holding_patch(
    host: str, port: int, location: str, length: int, first: bytes, probe: Callable[[], Awaitable[int]]
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A PATCH at offset 0, stopped after ``first``, that holds the upload's lock.

    ``probe`` sends a PATCH at a wrong offset, which never writes: 409 while the lock
    is free, 423 once the held PATCH has it. A probe can hold the lock at the very
    moment the held PATCH asks for it; that PATCH is then refused, and sent again.
    """
    async with asyncio.timeout(30):
        while True:
            reader, writer = await open_patch(host, port, location, 0, length, first)
            while (status := await probe()) != 423:
                assert status == 409
                try:
                    async with asyncio.timeout(0.1):
                        await reader.readline()  # an answer: the held PATCH was refused
                    break
                except TimeoutError:
                    continue
            else:
                return reader, writer
            writer.close()


async def test_concurrent_patches_are_refused(backend: Backend, proxy_client: Any) -> None:
    client = await proxy_client(backend.config)
    location = await create(client, 10)

    async def probe() -> int:
        return int((await patch(client, location, 99, b"zz")).status)

    reader, writer = await holding_patch(client.host, client.port, location, 5, b"abc", probe)
    for offset in (0, 3):
        second = await patch(client, location, offset, b"zz")
        assert second.status == 423, await second.text()
        assert (await second.json())["error"] == "locked"
        assert second.headers["Tus-Resumable"] == "1.0.0"
    assert (await client.delete(location, headers=TUS)).status == 423
    writer.write(b"de")
    assert await status_of(reader) == 204
    writer.close()
    assert (await patch(client, location, 5, b"fghij")).status == 204
    assert backend.view.get(object_key(location)) == b"abcdefghij"


async def test_patch_cut_off_keeps_what_arrived(backend: Backend, proxy_client: Any) -> None:
    client = await proxy_client(backend.config)
    data = bytes(range(256)) * (40 * 1024)  # 10 MiB
    location = await create(client, len(data))
    sent = 7 * MiB + 11
    _, writer = await asyncio.open_connection(client.host, client.port)
    writer.write(
        f"PATCH {location} HTTP/1.1\r\nHost: x\r\nTus-Resumable: 1.0.0\r\n"
        f"Content-Type: application/offset+octet-stream\r\nUpload-Offset: 0\r\n"
        f"Content-Length: {len(data)}\r\n\r\n".encode()
        + data[:sent]
    )
    await writer.drain()
    await asyncio.sleep(1.0)
    writer.close()

    async def settled() -> int:
        async with asyncio.timeout(20):
            while True:
                response = await client.patch(location, data=b"", headers={**OCTET, "Upload-Offset": "0"})
                if response.status == 409:
                    return await offset_of(client, location)
                await asyncio.sleep(0.1)

    offset = await settled()
    assert offset == sent
    assert (await patch(client, location, offset, data[offset:])).status == 204
    assert (
        hashlib.sha256(backend.view.get(object_key(location))).hexdigest() == hashlib.sha256(data).hexdigest()
    )
    assert backend.view.metadata(object_key(location))["sha256"] == hashlib.sha256(data).hexdigest()


async def test_cut_off_chunk_with_checksum_is_discarded(backend: Backend, proxy_client: Any) -> None:
    client = await proxy_client(backend.config)
    location = await create(client, 1000)
    checksum = base64.b64encode(hashlib.sha1(b"x" * 1000).digest()).decode()
    _, writer = await asyncio.open_connection(client.host, client.port)
    writer.write(
        f"PATCH {location} HTTP/1.1\r\nHost: x\r\nTus-Resumable: 1.0.0\r\n"
        f"Content-Type: application/offset+octet-stream\r\nUpload-Offset: 0\r\n"
        f"Upload-Checksum: sha1 {checksum}\r\nContent-Length: 1000\r\n\r\n".encode()
        + b"x" * 600
    )
    await writer.drain()
    await asyncio.sleep(0.3)
    writer.close()
    async with asyncio.timeout(10):
        while (await patch(client, location, 0, b"")).status == 423:
            await asyncio.sleep(0.1)
    assert await offset_of(client, location) == 0


async def test_method_override(backend: Backend, proxy_client: Any) -> None:
    client = await proxy_client(backend.config)
    location = await create(client, 3)
    response = await client.post(
        location, data=b"abc", headers={**OCTET, "Upload-Offset": "0", "X-HTTP-Method-Override": "PATCH"}
    )
    assert response.status == 204
    assert backend.view.get(object_key(location)) == b"abc"
    other = await create(client, 3)
    response = await client.post(other, headers={**TUS, "X-HTTP-Method-Override": "DELETE"})
    assert response.status == 204
    assert (await client.post(other, headers=TUS)).status == 405
