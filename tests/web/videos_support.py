"""What the /videos/ tests share: tiny clips made by ffmpeg from its lavfi sources,
a config whose job loop looks for work often, and the HTTP steps (wait for a job's
state, fetch every file an HLS master playlist names through /files/)."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import quote, urljoin

from aiohttp.test_utils import TestClient

from proxy.config import Config, VideoConfig
from tests.conftest import require

# A job of a second or two of video on 2 shared cores, with other tests running.
JOB_TIMEOUT = 120.0


def require_ffmpeg() -> None:
    require(shutil.which("ffmpeg") is not None, "ffmpeg is not installed")
    require(shutil.which("ffprobe") is not None, "ffprobe is not installed")


def make_clip(path: Path, seconds: float = 2.0, *, size: str = "320x240", tone: int = 440) -> bytes:
    """An H.264/AAC MP4 (the copy path) of ``seconds``: a test pattern and a tone
    (``tone`` Hz, so that two clips differ), a key frame every second."""
    require_ffmpeg()
    args = ["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-y"]
    args += ["-f", "lavfi", "-i", f"testsrc2=size={size}:rate=25:duration={seconds}"]
    args += ["-f", "lavfi", "-i", f"sine=frequency={tone}:sample_rate=48000:duration={seconds}"]
    args += ["-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", "-g", "25"]
    args += ["-c:a", "aac", "-b:a", "64k", "-shortest", "-movflags", "+faststart", str(path)]
    done = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return path.read_bytes()


def video_config(base: Config, **video: Any) -> Config:
    """``base`` with a job loop that looks for work every 0.2 s."""
    settings = VideoConfig(**{"poll_interval": 0.2, "lease": 5.0, **video})
    return replace(base, video=settings)


def files_path(key: str) -> str:
    return "/files/" + quote(key)


def videos_path(key: str) -> str:
    return "/videos/" + quote(key)


async def job_of(client: TestClient[Any, Any], key: str, **kwargs: Any) -> tuple[int, dict[str, Any]]:
    response = await client.get(videos_path(key), **kwargs)
    body: dict[str, Any] = await response.json()
    return response.status, body


async def wait_for_end(client: TestClient[Any, Any], key: str, **kwargs: Any) -> dict[str, Any]:
    """The job of ``key`` once it is done or failed; every state seen on the way is
    one of the four."""
    async with asyncio.timeout(JOB_TIMEOUT):
        while True:
            status, body = await job_of(client, key, **kwargs)
            assert status == 200, body
            assert body["state"] in ("queued", "running", "done", "failed"), body
            assert 0 <= body["progress"] <= 100, body
            if body["state"] in ("done", "failed"):
                return body
            await asyncio.sleep(0.2)


def playlist_uris(text: str) -> list[str]:
    """The URIs an m3u8 names: its lines that are no tag, and URI="..." attributes."""
    uris = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            uris.append(line)
        elif 'URI="' in line:
            uris.append(line.split('URI="', 1)[1].split('"', 1)[0])
    return uris


async def fetch_hls(client: TestClient[Any, Any], master: str, **kwargs: Any) -> dict[str, tuple[str, bytes]]:
    """Every file reachable from the master playlist at path ``master``, by path:
    (content type, bytes); each must be answered 200."""
    found: dict[str, tuple[str, bytes]] = {}
    todo = [master]
    while todo:
        path = todo.pop()
        if path in found:
            continue
        response = await client.get(path, **kwargs)
        body = await response.read()
        assert response.status == 200, (path, response.status, body[:200])
        found[path] = (response.headers["Content-Type"], body)
        if path.endswith(".m3u8"):
            text = body.decode()
            assert text.startswith("#EXTM3U"), text[:100]
            todo += [urljoin(path, uri) for uri in playlist_uris(text)]
    return found
