"""What is not a video, what cannot be read, and what is stopped: clear reasons, nothing left over."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from proxy.video.making import MakeSettings, NotAVideo, Source, VideoFailed, make, probe
from tests.video.support import DirSink, http_source, processes_mentioning
from tests.video.test_making import fd_source, settings


async def nothing(percent: float) -> None:
    pass


@pytest.mark.parametrize("clip", ["text", "zero", "audio"])
async def test_not_a_video(clips: dict[str, Path], tmp_path: Path, clip: str) -> None:
    """Text named .mp4 and an empty file are no media at all; AAC alone has no video stream."""
    with fd_source(clips[clip]) as source, pytest.raises(NotAVideo) as failed:
        await probe(settings(tmp_path), source)
    assert str(failed.value) == "not a video"


def assert_clean(reason: str) -> None:
    """No path, URL, host or signature in a reason users see."""
    for secret in ("/", "127.0.0.1", "SECRET", "tmp", "clip"):
        assert secret not in reason, reason


async def test_truncated_mp4_is_unreadable(clips: dict[str, Path], tmp_path: Path) -> None:
    with fd_source(clips["truncated"]) as source, pytest.raises(VideoFailed) as failed:
        await probe(settings(tmp_path), source)
    assert not isinstance(failed.value, NotAVideo)
    assert str(failed.value) == "unreadable: moov atom not found"


async def test_make_of_a_source_gone_bad_fails_and_puts_nothing(
    clips: dict[str, Path], tmp_path: Path
) -> None:
    """The info of the whole file, the bytes of its first half: ffmpeg fails before any file is done."""
    s = settings(tmp_path)
    with fd_source(clips["h264"]) as whole:
        info = await probe(s, whole)
    sink = DirSink(tmp_path / "out")
    with fd_source(clips["truncated"]) as source, pytest.raises(VideoFailed) as failed:
        await make(s, source, info, sink, nothing)
    assert str(failed.value).startswith("ffmpeg failed: ")
    assert_clean(str(failed.value))
    assert sink.order == []
    assert list((tmp_path / "temp").iterdir()) == []


async def test_http_failures_say_no_url(
    clips: dict[str, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    s = settings(tmp_path)
    caplog.set_level(logging.INFO)
    async with http_source(clips["h264"]) as (base, served):
        good = Source(f"{base}/clip?X-Amz-Signature=SECRET", headers=(("If-Match", served.etag),))
        info = await probe(s, good)
        # The object changed: If-Match no longer holds.
        with pytest.raises(VideoFailed) as changed:
            await probe(s, Source(good.url, headers=(("If-Match", '"other"'),)))
        assert str(changed.value) == "source changed"
        # ffmpeg itself refused (403): its message, without the URL.
        bad = Source(f"{base}/gone?X-Amz-Signature=SECRET", headers=good.headers)
        sink = DirSink(tmp_path / "out")
        with pytest.raises(VideoFailed) as failed:
            await make(s, bad, info, sink, nothing)
    assert str(failed.value).startswith("ffmpeg failed: ") and "403" in str(failed.value)
    assert_clean(str(failed.value))
    assert "SECRET" not in caplog.text
    assert sink.order == []


async def test_time_limit_kills_ffmpeg(clips: dict[str, Path], tmp_path: Path) -> None:
    s = settings(tmp_path)
    async with http_source(clips["vp9"], pace=0.05) as (base, served):
        source = Source(f"{base}/clip", headers=(("If-Match", served.etag),))
        info = await probe(s, source)
        with pytest.raises(VideoFailed) as failed:
            await make(
                MakeSettings(**{**s.__dict__, "time_limit": 1.0}),
                source,
                info,
                DirSink(tmp_path / "o"),
                nothing,
            )
    assert str(failed.value) == "timed out after 1 s"
    assert processes_mentioning(str(s.temp_dir)) == []
    assert list((tmp_path / "temp").iterdir()) == []


async def test_cancelling_kills_ffmpeg_and_removes_temp_files(clips: dict[str, Path], tmp_path: Path) -> None:
    s = settings(tmp_path)
    running = asyncio.Event()

    async def progress(percent: float) -> None:
        if percent > 5:  # the HLS run has begun
            running.set()

    async with http_source(clips["vp9"], pace=0.05) as (base, served):
        source = Source(f"{base}/clip", headers=(("If-Match", served.etag),))
        info = await probe(s, source)
        task = asyncio.create_task(make(s, source, info, DirSink(tmp_path / "o"), progress))
        await asyncio.wait_for(running.wait(), 60)
        assert processes_mentioning(str(s.temp_dir))
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert processes_mentioning(str(s.temp_dir)) == []
    assert list((tmp_path / "temp").iterdir()) == []


async def test_temporary_space_is_bounded(clips: dict[str, Path], tmp_path: Path) -> None:
    s = settings(tmp_path, max_temp_bytes=4096)
    with fd_source(clips["vp9"]) as source:
        info = await probe(s, source)
        with pytest.raises(VideoFailed) as failed:
            await make(s, source, info, DirSink(tmp_path / "o"), nothing)
    assert str(failed.value) == "temporary space exceeded (video.max_temp)"
    assert processes_mentioning(str(s.temp_dir)) == []
    assert list((tmp_path / "temp").iterdir()) == []


async def test_missing_ffmpeg_is_a_failure_not_a_crash(clips: dict[str, Path], tmp_path: Path) -> None:
    s = settings(tmp_path, ffprobe=str(tmp_path / "no-ffprobe"))
    with fd_source(clips["h264"]) as source, pytest.raises(VideoFailed) as failed:
        await probe(s, source)
    assert str(failed.value) == "ffprobe failed: no-ffprobe not found"
