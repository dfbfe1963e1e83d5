"""A real browser plays videos through the proxy: Debian's Chromium, driven by Playwright.

Chromium's media stack asks for every byte with ``Range``: it opens with ``bytes=0-``,
reads an MP4's ``moov`` (or a WebM's cues) at the end of the file with another range,
and each seek outside what it has buffered is a new ranged request. The test uploads
a video and an HTML page through the proxy (the page is an object too, served from
the same origin by GET /files/{key}), plays, seeks, and checks what Chromium sent and
got for the video, on both backends.

What plays, found by trying with Debian's chromium 156 (bookworm) and its ffmpeg:

- H.264 (libx264) in MP4 plays: Debian builds chromium with the proprietary codecs.
  A build without them answers ``canPlayType`` with "" and that variant is skipped.
- MPEG-4 part 2 (ffmpeg's ``mpeg4``) does not play: MEDIA_ERR_SRC_NOT_SUPPORTED,
  "FFmpegDemuxer: no supported streams". So it is not a fallback for H.264; the
  VP9-in-MP4 variant covers the moov-at-end case in every Chromium build.
- VP9 in MP4 and VP9 in WebM play (VP8 in WebM plays too; not used, to save an encode).

The videos are 320x240 testsrc with a keyframe every second, and noise on top so that
they are ~7.5 MB: Chromium buffers a few MB ahead and then pauses its first request
(at ~1 MB it sometimes read the whole file in one go), so a file this big needs ranged
requests to reach the moov at its end and for the later seeks, however fast 127.0.0.1
is. Both MP4s keep ffmpeg's default layout (no ``-movflags +faststart``): ``moov``
after ``mdat``.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Backend, require
from tests.web.browser_support import (
    CHROMIUM,
    CHROMIUM_ARGS,
    VARIANTS,
    Variant,
    make_videos,
    page_html,
    play_and_seek,
    require_chromium,
)

__all__ = ["CHROMIUM", "CHROMIUM_ARGS"]  # test_cors_browser.py imports them from here


@pytest.fixture(scope="module")
def chromium() -> Path:
    return require_chromium()


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The variants this ffmpeg can make, by name."""
    return make_videos(tmp_path_factory.mktemp("videos"))


@pytest.mark.parametrize("variant", VARIANTS, ids=[v.name for v in VARIANTS])
async def test_browser_plays_and_seeks(
    backend: Backend, proxy_client: Any, chromium: Path, videos: dict[str, Path], variant: Variant
) -> None:
    require(variant.name in videos, f"this ffmpeg has no {variant.encoder} encoder")
    data = videos[variant.name].read_bytes()
    key = f"videos/{variant.name}"

    # The page that plays the video is itself stored here: served inline as a site's.
    server = replace(backend.config.server, inline_prefixes=("pages/",))
    client = await proxy_client(replace(backend.config, server=server))
    put = await client.put(f"/files/{key}", data=data, headers={"Content-Type": variant.content_type})
    assert put.status == 201, await put.text()
    page_key = f"pages/{variant.name}.html"
    put = await client.put(f"/files/{page_key}", data=page_html(key), headers={"Content-Type": "text/html"})
    assert put.status == 201, await put.text()
    await play_and_seek(
        chromium,
        str(client.make_url(f"/files/{page_key}")),
        str(client.make_url(f"/files/{key}")),
        variant,
        len(data),
    )
