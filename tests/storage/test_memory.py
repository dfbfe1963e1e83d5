"""The in-memory backend (tests/storage/memory.py) where it goes beyond the contract
suite: the application runs on it, and it refuses what the interface forbids."""

from __future__ import annotations

import base64
import hashlib
from typing import Any

import pytest

from proxy.app import create_app
from proxy.config import Config
from proxy.storage.resumable import UploadBody
from tests.conftest import agen, new_upload_state
from tests.storage.memory import MemoryStorage, memory_backend

TUS = {"Tus-Resumable": "1.0.0"}


async def test_the_application_serves_files_from_it(aiohttp_client: Any) -> None:
    backend = memory_backend()
    client = await aiohttp_client(create_app(Config(), backend))
    data = bytes(range(256)) * 1000
    response = await client.put("/files/videos/a.mp4", data=data)
    body = await response.json()
    assert response.status == 201, body
    assert body["sha256"] == hashlib.sha256(data).hexdigest()
    assert body["content_type"] == "video/mp4"

    response = await client.get("/files/videos/a.mp4", headers={"Range": "bytes=1000-1999"})
    assert response.status == 206
    assert await response.read() == data[1000:2000]
    assert response.headers["ETag"] == body["etag"]
    listing = await (await client.get("/files", params={"prefix": "videos/"})).json()
    assert [o["key"] for o in listing["objects"]] == ["videos/a.mp4"]

    assert (await client.delete("/files/videos/a.mp4")).status == 204
    assert (await client.get("/files/videos/a.mp4")).status == 404
    assert isinstance(backend.objects, MemoryStorage)
    assert backend.objects.stored_keys() == []


async def test_the_application_takes_resumable_uploads_into_it(aiohttp_client: Any) -> None:
    backend = memory_backend()
    client = await aiohttp_client(create_app(Config(), backend))
    data = b"hello resumable world"
    filename = base64.b64encode(b"clip.mp4").decode()
    response = await client.post(
        "/uploads/",
        headers={**TUS, "Upload-Length": str(len(data)), "Upload-Metadata": f"filename {filename}"},
    )
    assert response.status == 201
    location = response.headers["Location"]
    for offset, piece in ((0, data[:5]), (5, data[5:])):
        response = await client.patch(
            location,
            data=piece,
            headers={**TUS, "Upload-Offset": str(offset), "Content-Type": "application/offset+octet-stream"},
        )
        assert response.status == 204
    object_location = response.headers["Object-Location"]
    response = await client.get(object_location)
    assert await response.read() == data
    response = await client.head(location, headers=TUS)
    assert response.headers["Upload-Offset"] == str(len(data))

    assert (await client.delete(location, headers=TUS)).status == 204
    assert (await client.head(location, headers=TUS)).status == 404
    assert (await client.get(object_location)).status == 200  # the object stays


async def test_changing_an_upload_without_its_lock_is_refused() -> None:
    """The interface's rule, which the real backends trust their callers to keep."""
    backend = memory_backend()
    uploads = backend.uploads
    state = await uploads.create(new_upload_state(3))
    with pytest.raises(RuntimeError):
        await uploads.save(state)
    with pytest.raises(RuntimeError):
        await uploads.append(state, UploadBody(agen([b"abc"]), state=state))
    with pytest.raises(RuntimeError):
        await uploads.finish(state)
    with pytest.raises(RuntimeError):
        await uploads.terminate(state)
    assert await uploads.get(state.id) == state
    async with uploads.lock(state.id) as held:
        held = await uploads.append(held, UploadBody(agen([b"abc"]), state=held))
        await uploads.finish(held)
    assert (await uploads.get(state.id)).done


async def test_malformed_upload_ids_never_become_keys() -> None:
    uploads = memory_backend().uploads
    for bad in ("../../x", "A" * 32, ""):
        with pytest.raises(ValueError):
            await uploads.get(bad)
        with pytest.raises(ValueError):
            async with uploads.lock(bad):
                pass
