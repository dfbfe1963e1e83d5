"""/videos/ refuses what it must: hostile keys (400 JSON, before anything is read),
callers without the grant (401/403), and with video off it answers 404 JSON while
uploads go on as before."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from yarl import URL

from proxy.rules.grants import Action
from proxy.storage import layout
from tests.conftest import Backend, backend_for
from tests.web.auth_support import auth_config, bearer, token_for
from tests.web.videos_support import (
    files_path,
    job_of,
    make_clip,
    require_ffmpeg,
    video_config,
    videos_path,
    wait_for_end,
)


@pytest.fixture
def local(tmp_path: Path) -> Backend:
    return backend_for("local", tmp_path, None, None)


HOSTILE = [
    "/videos/a/../b.mp4",
    "/videos/a/%2e%2e/b.mp4",
    "/videos/.stream-proxy/jobs/x",
    "/videos/%2Estream-proxy%2Fjobs%2Fx",
    "/videos/a//b.mp4",
    "/videos/a%5c..%5cb.mp4",
    "/videos/" + "x" * 256 + ".mp4",
    "/videos/" + "/".join(["abcdefgh"] * 120),
    "/videos/a%00b.mp4",
    "/videos/a%0Ab.mp4",
]
# Escapes that decode to nothing stay as written, as on /files/: a key like any other.
LITERAL = ["/videos/a%ZZb.mp4", "/videos/%ff%fe.mp4"]


@pytest.mark.parametrize("method", ["GET", "POST", "DELETE"])
async def test_hostile_keys_are_refused(proxy_client: Any, local: Backend, method: str) -> None:
    require_ffmpeg()
    client: TestClient[Any, Any] = await proxy_client(video_config(local.config))
    base = str(client.make_url("")).rstrip("/")
    for path in HOSTILE + LITERAL:
        # Sent as written: no client-side normalising of dot segments or escapes.
        response = await client.session.request(method, URL(base + path, encoded=True))
        if path in LITERAL:
            assert response.status == (204 if method == "DELETE" else 404), path
            continue
        body = await response.json()
        assert response.status == 400 and body["error"] == "invalid_key", (path, body)
        assert set(body) == {"error", "message", "request_id"}, body
        assert str(local.config.storage.local.root) not in body["message"]
    assert local.view.keys() == []


async def test_grants_decide_who_may_look_ask_and_remove(proxy_client: Any, local: Backend) -> None:
    clip = make_clip(local.config.storage.local.root.parent / "clip.mp4", 1.0)
    config = video_config(auth_config(local.config))
    client: TestClient[Any, Any] = await proxy_client(config)
    key = "movies/clip.mp4"
    response = await client.put(files_path(key), data=clip, headers=bearer("full"))
    assert response.status == 201
    job = await wait_for_end(client, key, headers=bearer("full"))
    assert job["state"] == "done"
    # GET needs read, POST read and write (a write alone would learn from its 404 that
    # the object is missing), DELETE delete on the key: others 401 (anonymous) or 403.
    path = videos_path(key)
    refused = {
        ("GET", "none"): 401,
        ("GET", "writer"): 403,
        ("GET", "narrow"): 403,
        ("POST", "none"): 401,
        ("POST", "reader"): 403,
        ("POST", "writer"): 403,
        ("DELETE", "reader"): 403,
        ("DELETE", "writer"): 403,
    }
    for (method, who), status in refused.items():
        headers = {} if who == "none" else bearer(who)
        response = await client.request(method, path, headers=headers)
        assert response.status == status, (method, who, await response.text())
        assert (await response.json())["error"] in ("unauthorized", "forbidden")
    assert (await client.get(path, headers=bearer("reader"))).status == 200
    # What was made is read with a read grant on the key's prefix (a token's, or a URL
    # signed for the key's folder): the derived files are under K.video/.
    assert (await client.get(job["hls"], headers=bearer("reader"))).status == 200
    signed = token_for(Action.READ, "movies/", prefix=True)
    assert (await client.get(f"/s/{signed}{job['poster']}")).status == 200
    assert (await client.get(f"/s/{signed}{path}")).status == 200
    # Readers who may write may ask again; deleters may remove.
    response = await client.post(path, headers=bearer("full"))
    assert response.status == 202 and (await response.json())["state"] == "queued"
    assert (await wait_for_end(client, key, headers=bearer("reader")))["state"] == "done"
    assert (await client.delete(path, headers=bearer("deleter"))).status == 204
    assert (await job_of(client, key, headers=bearer("reader")))[0] == 404
    assert local.view.keys() == [key]


@pytest.mark.parametrize("off", [{"enabled": False}, {"ffmpeg": "/nonexistent/ffmpeg"}])
async def test_video_off_answers_404_and_uploads_go_on(
    proxy_client: Any, local: Backend, off: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "proxy.video")
    client: TestClient[Any, Any] = await proxy_client(video_config(local.config, **off))
    data = b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 1000  # media by its first bytes
    response = await client.put(files_path("a.mp4"), data=data)
    assert response.status == 201
    for method in ("GET", "POST", "DELETE"):
        response = await client.request(method, videos_path("a.mp4"))
        body = await response.json()
        assert response.status == 404 and body["error"] == "not_found", (method, body)
    assert local.view.keys() == ["a.mp4"] and local.view.get("a.mp4") == data
    assert (await client.delete(files_path("a.mp4"))).status == 204
    warned = [r.getMessage() for r in caplog.records if "video is off" in r.getMessage()]
    assert len(warned) == (0 if off.get("enabled") is False else 1), warned


async def test_a_failing_job_store_does_not_fail_uploads(
    proxy_client: Any, local: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    clip = make_clip(local.config.storage.local.root.parent / "clip.mp4", 1.0)
    client: TestClient[Any, Any] = await proxy_client(video_config(local.config))
    # The job records' directory made unusable (a file in its place): every enqueue fails.
    records = local.config.storage.local.root / layout.JOB_RECORDS
    shutil.rmtree(records)
    records.write_text("in the way")
    response = await client.put(files_path("a.mp4"), data=clip)
    assert response.status == 201 and local.view.get("a.mp4") == clip
    assert (await client.delete(files_path("a.mp4"))).status == 204
    assert any("GET /videos/ will put it right" in r.getMessage() for r in caplog.records)
    # Mended, the same requests queue and make as ever.
    records.unlink()
    records.mkdir()
    assert (await client.put(files_path("a.mp4"), data=clip)).status == 201
    assert (await wait_for_end(client, "a.mp4"))["state"] == "done"
