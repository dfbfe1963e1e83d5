"""Chromium plays and seeks a video through nginx (the shipped file) in front of two
instances sharing a real RGW bucket: every range it asks for is answered as it asked,
whichever instance nginx picked. The page and the checks are test_browser.py's
(tests/web/browser_support.py); one variant is enough here: an MP4 with its moov at
the end, so that Chromium must ask for ranges past the first."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import S3Endpoint, require
from tests.deploy.conftest import NginxFront, fresh_bucket, nginx_front_running, require_nginx
from tests.web.browser_support import (
    VARIANTS,
    Variant,
    ffmpeg_encoders,
    make_videos,
    page_html,
    play_and_seek,
    require_chromium,
)


@pytest.fixture(scope="module")
def video(tmp_path_factory: pytest.TempPathFactory) -> tuple[Variant, Path]:
    require_chromium()
    require_nginx()
    encoders = ffmpeg_encoders()
    # The first variant this ffmpeg can encode whose moov is at the end.
    playable = [v for v in VARIANTS if v.encoder in encoders and v.name.endswith(".mp4")]
    require(bool(playable), "this ffmpeg has neither libx264 nor libvpx-vp9")
    variant = playable[0]
    made = make_videos(tmp_path_factory.mktemp("videos"), {variant.name})
    return variant, made[variant.name]


@pytest.fixture
def front_with_pages(tmp_path: Path, real_s3: S3Endpoint) -> Iterator[NginxFront]:
    """nginx_front, with the page that plays the video served inline as a site's."""
    pages = 'inline_prefixes = ["pages/"]'
    for bucket in fresh_bucket(real_s3):
        with nginx_front_running(tmp_path, real_s3, bucket, server_settings=pages) as front:
            yield front


@pytest.mark.slow
async def test_chromium_plays_and_seeks_through_nginx(
    video: tuple[Variant, Path], front_with_pages: NginxFront
) -> None:
    variant, path = video
    front = front_with_pages
    data = path.read_bytes()
    key, page_key = f"videos/{variant.name}", f"pages/{variant.name}.html"
    async with aiohttp.ClientSession(front.url) as session:
        for k, body, content_type in [
            (key, data, variant.content_type),
            (page_key, page_html(key).encode(), "text/html"),
        ]:
            async with session.put(f"/files/{k}", data=body, headers={"Content-Type": content_type}) as r:
                assert r.status == 201, await r.text()
    await play_and_seek(
        require_chromium(), f"{front.url}/files/{page_key}", f"{front.url}/files/{key}", variant, len(data)
    )
    # nginx took the instances in turn: both served ranges of the video.
    for instance in front.instances:
        lines = instance.log().splitlines()
        assert any("GET" in line and f"/files/{key}" in line for line in lines), instance.name
