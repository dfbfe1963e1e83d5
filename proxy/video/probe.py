"""What a source is: its first bytes (a media container at all?), then ffprobe's account of it.

Decisions:
- A source whose first bytes are no media signature (:func:`proxy.rules.video.sniff_container`)
  is :class:`NotAVideo`, and ffprobe is not run: a text file named ``video.mp4`` and a
  zero-byte file are both "not a video" (they hold no video), the same call the upload
  hooks make before queueing.
- A media file ffprobe cannot read (a truncated MP4 whose ``moov`` never came, a corrupt
  header) is ``VideoFailed("unreadable: <ffprobe's message>")``.
- A readable file with no video stream (audio only; a cover picture is not a video
  stream) is :class:`NotAVideo`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
from typing import Any

import aiohttp

from proxy.rules.video import (
    SNIFF_BYTES,
    failure_reason,
    input_args,
    main_video,
    reduce_probe,
    sniff_container,
)
from proxy.video.base import MakeSettings, NotAVideo, Source, VideoFailed
from proxy.video.ffmpeg import ToolError, run_tool

log = logging.getLogger(__name__)

_FD = re.compile(r"/dev/fd/([0-9]+)")
HEAD_TIMEOUT = 30.0


async def read_head(source: Source, size: int = SNIFF_BYTES) -> bytes:
    """The source's first ``size`` bytes (fewer when it is shorter)."""
    if source.url.startswith(("http://", "https://")):
        return await _http_head(source, size)
    if m := _FD.fullmatch(source.url):
        # pread: the descriptor's offset stays where it was (ffmpeg reopens /dev/fd/N anyway).
        return await asyncio.to_thread(os.pread, int(m.group(1)), size, 0)

    def read_file() -> bytes:
        with open(source.url, "rb") as f:
            return f.read(size)

    try:
        return await asyncio.to_thread(read_file)
    except OSError as exc:
        raise VideoFailed("source unreadable") from exc


async def _http_head(source: Source, size: int) -> bytes:
    headers = {**dict(source.headers), "Range": f"bytes=0-{size - 1}"}
    timeout = aiohttp.ClientTimeout(total=HEAD_TIMEOUT)
    try:
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.get(source.url, headers=headers) as response,
        ):
            if response.status == 416:  # a zero-byte object has no byte 0
                return b""
            if response.status == 412:
                raise VideoFailed("source changed")
            if response.status not in (200, 206):
                raise VideoFailed(f"source unreadable (HTTP {response.status})")
            return await response.content.read(size)
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise VideoFailed("source unreadable") from exc


async def run_ffprobe(settings: MakeSettings, source: Source, url: str | None = None) -> dict[str, Any]:
    """ffprobe's JSON (format and streams) for ``url`` (default: the source's)."""
    args = [
        settings.ffprobe,
        *("-v", "error", "-print_format", "json", "-show_format", "-show_streams"),
        *input_args(url or source.url, source.headers if url is None else ()),
    ]
    try:
        async with asyncio.timeout(settings.time_limit):
            finished = await run_tool(args, nice=settings.nice, pass_fds=source.pass_fds)
    except TimeoutError:
        raise VideoFailed("timed out") from None
    except ToolError as exc:
        raise VideoFailed(f"ffprobe failed: {exc}") from None
    if finished.returncode != 0:
        raise VideoFailed(f"unreadable: {failure_reason(finished.stderr, source.secrets())}")
    try:
        answer = json.loads(finished.stdout)
    except ValueError:
        raise VideoFailed("unreadable: ffprobe's answer is not JSON") from None
    if not isinstance(answer, dict):
        raise VideoFailed("unreadable: ffprobe's answer is not JSON")
    return answer


async def probe(settings: MakeSettings, source: Source) -> dict[str, Any]:
    """ffprobe's answer reduced to the info dict; NotAVideo / VideoFailed as the module says."""
    if sniff_container(await read_head(source)) is None:
        raise NotAVideo()
    info = reduce_probe(await run_ffprobe(settings, source))
    if main_video(info) is None:
        raise NotAVideo()
    if not info.get("duration") or info["duration"] <= 0:
        raise VideoFailed("unreadable: no duration")
    return info
