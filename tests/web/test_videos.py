"""/videos/ on both backends with real ffmpeg: an uploaded clip (PUT, POST, tus) is
made into a poster and HLS served through /files/; files that are no video get no
job, or fail when asked for; overwrites and deletes re-make or remove what was made."""

from __future__ import annotations

import hashlib
from typing import Any
from urllib.parse import unquote

import aiohttp
import pytest
from aiohttp.test_utils import TestClient

from tests.conftest import Backend, wait_until
from tests.web.videos_support import (
    fetch_hls,
    files_path,
    job_of,
    make_clip,
    video_config,
    videos_path,
    wait_for_end,
)

KEY = "movies/clip one.mp4"
DERIVED = KEY + ".video/"


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    tmp = tmp_path_factory.mktemp("clips")
    return {
        "a": make_clip(tmp / "a.mp4", 2.0, tone=440),
        "b": make_clip(tmp / "b.mp4", 1.0, size="240x180", tone=880),
    }


async def _client(proxy_client: Any, backend: Backend, **video: Any) -> TestClient[Any, Any]:
    client: TestClient[Any, Any] = await proxy_client(video_config(backend.config, **video))
    return client


async def _put(client: TestClient[Any, Any], key: str, data: bytes, content_type: str = "video/mp4") -> str:
    response = await client.put(files_path(key), data=data, headers={"Content-Type": content_type})
    assert response.status == 201, await response.text()
    etag: str = (await response.json())["etag"]
    return etag


def _derived(backend: Backend, key: str = KEY) -> list[str]:
    stored = backend.view.keys()
    return [k for k in stored if k.startswith(key + ".video/")]


def _attempts(backend: Backend, key: str = KEY) -> set[str]:
    return {k.removeprefix(key + ".video/").split("/")[0] for k in _derived(backend, key)}


async def test_an_uploaded_clip_is_made_and_served_through_files(
    proxy_client: Any, backend: Backend, clips: dict[str, bytes]
) -> None:
    client = await _client(proxy_client, backend)
    await _put(client, KEY, clips["a"])
    status, first = await job_of(client, KEY)
    assert status == 200 and first["state"] in ("queued", "running", "done"), first
    assert first["key"] == KEY
    job = await wait_for_end(client, KEY)
    assert job["state"] == "done", job
    assert job["reason"] is None and job["progress"] == 100
    assert job["info"]["duration"] == pytest.approx(2.0, abs=0.1)
    assert {s["codec"] for s in job["info"]["streams"]} >= {"h264", "aac"}
    assert job["renditions"] and job["renditions"][0]["height"] == 240
    # Every path is /files/ + the URL-encoded key of a derived file of this attempt.
    (attempt,) = _attempts(backend)
    for name, file in (("hls", "master.m3u8"), ("poster", "poster.jpg"), ("thumbnail", "thumb.jpg")):
        assert job[name] == files_path(f"{DERIVED}{attempt}/{file}"), job
    for name in ("poster", "thumbnail"):
        response = await client.get(job[name])
        body = await response.read()
        assert response.status == 200 and response.content_type == "image/jpeg"
        assert body[:2] == b"\xff\xd8" and body[-2:] == b"\xff\xd9"  # a whole JPEG
    served = await fetch_hls(client, job["hls"])
    kinds = {path.rsplit(".", 1)[1]: ctype for path, (ctype, _) in served.items()}
    assert kinds == {"m3u8": "application/vnd.apple.mpegurl", "mp4": "video/mp4", "m4s": "video/iso.segment"}
    assert sum(1 for p in served if p.endswith(".m4s")) >= 1
    # What /files/ served is what is stored, byte for byte.
    for path, (_, body) in served.items():
        stored = backend.view.get(unquote(path.removeprefix("/files/")))
        assert hashlib.sha256(body).digest() == hashlib.sha256(stored).digest(), path


async def test_files_that_are_no_video_get_no_job_and_fail_when_asked(
    proxy_client: Any, backend: Backend, clips: dict[str, bytes]
) -> None:
    client = await _client(proxy_client, backend)
    truncated = clips["a"][: len(clips["a"]) // 3]
    cases = {"text/video.mp4": b"just some text, not a video\n" * 10, "empty/video.mp4": b""}
    for key, data in cases.items():
        await _put(client, key, data)
        status, body = await job_of(client, key)
        assert status == 404 and body["error"] == "not_found", body
    # A user who asks gets a job, and a clear reason.
    for key in cases:
        response = await client.post(videos_path(key))
        assert response.status == 202, await response.text()
        assert (await response.json())["state"] == "queued"
    await _put(client, "cut/video.mp4", truncated)  # media by its first bytes: queued
    ended = {key: await wait_for_end(client, key) for key in [*cases, "cut/video.mp4"]}
    assert ended["text/video.mp4"]["reason"] == "not a video"
    for key, job in ended.items():
        assert job["state"] == "failed" and job["reason"], job
        assert job["hls"] is None and job["poster"] is None
        assert _derived(backend, key) == [], key
    assert "/" not in ended["cut/video.mp4"]["reason"]  # no path or URL in a reason


async def test_overwrites_re_make_or_remove_and_deletes_remove(
    proxy_client: Any, backend: Backend, clips: dict[str, bytes]
) -> None:
    client = await _client(proxy_client, backend)
    await _put(client, KEY, clips["a"])
    first = await wait_for_end(client, KEY)
    assert first["state"] == "done"
    (old,) = _attempts(backend)
    # Another clip over it: made again, in a new attempt; the old one is gone.
    await _put(client, KEY, clips["b"])
    second = await wait_for_end(client, KEY)
    assert second["state"] == "done" and second["info"]["duration"] == pytest.approx(1.0, abs=0.1)
    # The older attempt goes right after the job is done (asynchronously: wait for it).
    await wait_until(lambda: len(_attempts(backend)) == 1, 30)
    (new,) = _attempts(backend)
    assert new != old and second["hls"] != first["hls"]
    assert (await client.get(first["hls"])).status == 404
    # Text over it: no job, nothing derived.
    await _put(client, KEY, b"now a text file", "text/plain")
    assert (await job_of(client, KEY))[0] == 404
    assert _derived(backend) == []
    # A clip again, then DELETE /files/K: job and derived files go.
    await _put(client, KEY, clips["b"])
    assert (await wait_for_end(client, KEY))["state"] == "done"
    assert (await client.delete(files_path(KEY))).status == 204
    assert (await job_of(client, KEY))[0] == 404
    assert _derived(backend) == []
    # DELETE /videos/K: job and derived files go, the source stays; 204 again after.
    await _put(client, KEY, clips["b"])
    assert (await wait_for_end(client, KEY))["state"] == "done"
    for _ in range(2):
        assert (await client.delete(videos_path(KEY))).status == 204
        assert (await job_of(client, KEY))[0] == 404
    stored = backend.view.keys()
    assert _derived(backend) == [] and KEY in stored


async def test_tus_and_folder_uploads_queue_jobs(
    proxy_client: Any, backend: Backend, clips: dict[str, bytes]
) -> None:
    client = await _client(proxy_client, backend)
    form = aiohttp.FormData()
    form.add_field("file", clips["b"], filename="posted.mp4", content_type="video/mp4")
    form.add_field("file", b"a note", filename="note.txt", content_type="text/plain")
    response = await client.post("/files/folder/", data=form)
    assert response.status == 201, await response.text()
    tus = {"Tus-Resumable": "1.0.0"}
    created = await client.post(
        "/uploads/", headers={**tus, "Upload-Length": str(len(clips["b"])), "Upload-Metadata": ""}
    )
    assert created.status == 201, await created.text()
    patched = await client.patch(
        created.headers["Location"],
        data=clips["b"],
        headers={**tus, "Upload-Offset": "0", "Content-Type": "application/offset+octet-stream"},
    )
    assert patched.status == 204, await patched.text()
    tus_key = (await client.head(created.headers["Location"], headers=tus)).headers["Object-Location"]
    tus_key = unquote(tus_key.removeprefix("/files/"))
    for key in ("folder/posted.mp4", tus_key):
        assert (await wait_for_end(client, key))["state"] == "done", key
    assert (await job_of(client, "folder/note.txt"))[0] == 404
    # A folder's DELETE takes the derived files along; the jobs go when looked at.
    assert (await client.delete("/files/folder/")).status == 200
    assert _derived(backend, "folder/posted.mp4") == []
    assert (await job_of(client, "folder/posted.mp4"))[0] == 404
