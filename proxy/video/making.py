"""Make a video's poster, thumbnail and HLS renditions with ffmpeg, putting files out as they finish.

Public names (the interface the video service uses): :class:`MakeSettings`, :class:`Source`,
:class:`VideoFailed`, :class:`NotAVideo`, :func:`probe`, :class:`OutputSink`, :class:`Made`,
:func:`make`.

Two ffmpeg runs per job, both reading the source where it is (``/dev/fd/N`` or an HTTP
URL with ``If-Match``; never a local copy):

1. the poster and thumbnail (:func:`proxy.rules.video.poster_args`);
2. every rendition at once (:func:`proxy.rules.video.hls_args`), fMP4 HLS VOD into
   ``<temp>/v<N>/``. Every ``tick`` the renditions' playlists are read: a segment
   ffmpeg lists is complete, so it (and, before the first one, the init segment) is put
   to the sink and deleted. The temporary space therefore holds about the segments being
   written; it is measured every tick and past ``max_temp_bytes`` the job fails.

When ffmpeg ends, what is left is put, then each rendition's ``index.m3u8`` (written
here), then ``master.m3u8`` last: a player that finds the master finds everything.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from proxy.rules.video import (
    ProgressParser,
    Rendition,
    can_copy_audio,
    can_copy_video,
    failure_reason,
    hls_args,
    input_args,
    main_audio,
    main_video,
    plan_renditions,
    poster_args,
)
from proxy.video.base import MakeSettings, NotAVideo, Source, VideoFailed
from proxy.video.ffmpeg import Group, ToolError, run_tool
from proxy.video.playlists import (
    Segment,
    Variant,
    aac_codec,
    avc_codec,
    avc_codec_of_init,
    master_playlist,
    media_playlist,
    parse_media_playlist,
)
from proxy.video.probe import probe

__all__ = ["Made", "MakeSettings", "NotAVideo", "OutputSink", "Source", "VideoFailed", "make", "probe"]

log = logging.getLogger(__name__)

PLAYLIST_TYPE = "application/vnd.apple.mpegurl"
TICK = 0.5
# Segments uploaded at once while ffmpeg runs (each a PUT of a few MiB at most).
UPLOADS_AT_ONCE = 4
POSTER_SHARE = 5.0  # percent of the progress the poster run stands for


class OutputSink(Protocol):
    async def put(self, name: str, path: Path, content_type: str) -> None:
        """Store the finished temporary file ``path`` as ``name`` (relative, '/'-separated,
        e.g. "v0/seg00001.m4s"); the maker deletes ``path`` after put returns."""


@dataclass(frozen=True)
class Made:
    hls: str  # "master.m3u8"
    poster: str  # "poster.jpg"
    thumbnail: str  # "thumb.jpg"
    copied: bool  # True when the source's streams were copied, not re-encoded
    renditions: tuple[dict[str, Any], ...]  # name, width, height, bandwidth, copied, ...


async def make(
    settings: MakeSettings,
    source: Source,
    info: dict[str, Any],
    sink: OutputSink,
    progress: Callable[[float], Awaitable[None]],
) -> Made:
    """Poster + thumbnail + HLS (fMP4 segments, master.m3u8 put LAST, after every
    rendition's segments and playlists). Files are put as they are finished, so the
    temporary space stays bounded. progress(0..100) is awaited now and then.
    Cancelling it kills ffmpeg (its whole process group) and removes the temp files.

    Called with the ``info`` :func:`probe` returned for this source. On failure
    (:class:`VideoFailed`, cancellation, an exception from ``sink`` or ``progress``) the
    files already put stay: the caller deletes the attempt's prefix. Temporary files
    are always removed.
    """
    if main_video(info) is None:
        raise NotAVideo()
    try:
        async with asyncio.timeout(settings.time_limit) as limit:
            return await _Job(settings, source, info, sink, progress).run()
    except TimeoutError:
        if limit.expired():
            raise VideoFailed(f"timed out after {settings.time_limit:g} s") from None
        raise


@dataclass
class _Output:
    rendition: Rendition
    init_put: bool = False
    segments: list[tuple[Segment, int]] = field(default_factory=list)  # with sizes
    codecs: str = ""
    ended: bool = False  # ffmpeg's playlist says so


class _Job:
    def __init__(
        self,
        settings: MakeSettings,
        source: Source,
        info: dict[str, Any],
        sink: OutputSink,
        progress: Callable[[float], Awaitable[None]],
    ) -> None:
        self.settings, self.source, self.info = settings, source, info
        self.sink, self.progress = sink, progress
        self.copy = can_copy_video(info)
        self.outputs = [_Output(r) for r in plan_renditions(info, settings.ladder, self.copy)]
        self.reported = -1.0
        self.temp = Path()
        self.parser: ProgressParser | None = None

    async def run(self) -> Made:
        started = time.monotonic()
        self.temp = Path(
            await asyncio.to_thread(
                tempfile.mkdtemp, prefix="stream-proxy-video-", dir=self.settings.temp_dir
            )
        )
        try:
            await self._report(0.0)
            await self._poster()
            poster_done = time.monotonic()
            await self._hls()
            hls_done = time.monotonic()
            for out in self.outputs:
                playlist = self.temp / out.rendition.name / "index.m3u8"
                text = media_playlist(tuple(s for s, _ in out.segments))
                await asyncio.to_thread(playlist.write_text, text)
                await self._put(f"{out.rendition.name}/index.m3u8", playlist, PLAYLIST_TYPE)
            variants = tuple(self._variant(out) for out in self.outputs)
            master = self.temp / "master.m3u8"
            await asyncio.to_thread(master.write_text, master_playlist(variants))
            await self._put("master.m3u8", master, PLAYLIST_TYPE)
            await self._report(100.0)
        finally:
            # Shielded: a second cancellation must not leave the directory behind.
            await asyncio.shield(asyncio.to_thread(shutil.rmtree, self.temp, True))
        log.info(
            "video made: %d rendition(s), %s, in %.2f s (poster %.2f s, HLS %.2f s)",
            len(self.outputs),
            "copied" if self.copy else "encoded",
            time.monotonic() - started,
            poster_done - started,
            hls_done - poster_done,
        )
        return Made(
            hls="master.m3u8",
            poster="poster.jpg",
            thumbnail="thumb.jpg",
            copied=self.copy,
            renditions=tuple(self._described(out, v) for out, v in zip(self.outputs, variants, strict=True)),
        )

    # --- the two ffmpeg runs ---------------------------------------------------------------

    def _ffmpeg(self, args: list[str]) -> list[str]:
        return [self.settings.ffmpeg, "-v", "error", "-nostdin", "-hide_banner", *args]

    def _input(self) -> list[str]:
        return input_args(self.source.url, self.source.headers)

    async def _run(self, args: list[str], on_line: Callable[[str], object] | None = None) -> None:
        try:
            finished = await run_tool(
                args,
                nice=self.settings.nice,
                pass_fds=self.source.pass_fds,
                on_line=on_line,
                tick=self._tick,
                tick_interval=TICK,
            )
        except ToolError as exc:
            raise VideoFailed(f"ffmpeg failed: {exc}") from None
        if finished.returncode != 0:
            raise VideoFailed(f"ffmpeg failed: {failure_reason(finished.stderr, self.source.secrets())}")
        # What ffmpeg wrote since the last tick (all of it, if it ended before the first) counts too.
        await self._check_space()

    async def _poster(self) -> None:
        poster, thumb = self.temp / "poster.jpg", self.temp / "thumb.jpg"
        await self._run(self._ffmpeg(poster_args(self.info, self._input(), str(poster), str(thumb))))
        for path in (poster, thumb):
            if not await asyncio.to_thread(_nonempty, path):
                raise VideoFailed("ffmpeg made no poster")
        await self._put("poster.jpg", poster, "image/jpeg")
        await self._put("thumb.jpg", thumb, "image/jpeg")
        await self._report(POSTER_SHARE)

    async def _hls(self) -> None:
        renditions = tuple(out.rendition for out in self.outputs)
        args = hls_args(
            self.info, self._input(), renditions, str(self.temp), self.settings.segment_seconds,
            threads=self.settings.threads,
        )  # fmt: skip
        self.parser = ProgressParser(self.info.get("duration"))
        await self._run(self._ffmpeg(["-progress", "pipe:1", "-nostats", *args]), on_line=self.parser.feed)
        for out in self.outputs:
            await self._collect(out)
            if not (out.ended and out.segments):
                raise VideoFailed("ffmpeg made no complete rendition")

    # --- while ffmpeg runs -------------------------------------------------------------------

    async def _tick(self, group: Group) -> None:
        parser, put = self.parser, 0
        if parser is not None:
            for out in self.outputs:
                put += await self._collect(out)
            share = POSTER_SHARE + parser.percent * (99.0 - POSTER_SHARE) / 100
            if share - self.reported >= 1.0:
                await self._report(share)
        used = await self._check_space()
        # Backpressure: copying can outrun uploading (a disk reads faster than S3 takes), so
        # ffmpeg is stopped while its files fill over half the space, and continued once the
        # finished ones are uploaded, or when nothing was finished (the files being written
        # are that big: stopping would only wait for the time limit).
        if not group.paused and used > self.settings.max_temp_bytes // 2:
            group.pause()
        elif group.paused and (used <= self.settings.max_temp_bytes // 2 or not put):
            group.resume()

    async def _check_space(self) -> int:
        used = await asyncio.to_thread(_tree_size, self.temp)
        if used > self.settings.max_temp_bytes:
            raise VideoFailed("temporary space exceeded (video.max_temp)")
        return used

    async def _collect(self, out: _Output) -> int:
        """Put the segments ffmpeg has listed and not yet put; how many."""
        directory = self.temp / out.rendition.name
        try:
            text = await asyncio.to_thread((directory / "index.m3u8").read_text)
        except FileNotFoundError:
            return 0
        try:
            listed = parse_media_playlist(text)
        except ValueError as exc:
            raise VideoFailed(f"ffmpeg failed: {exc}") from None
        new = listed.segments[len(out.segments) :]
        if new and not out.init_put:
            if listed.init is None:
                raise VideoFailed("ffmpeg failed: no init segment")
            init = directory / listed.init
            out.codecs = await self._codecs(init)
            await self._put(f"{out.rendition.name}/init.mp4", init, "video/mp4")
            out.init_put = True
        sizes = [(await asyncio.to_thread((directory / s.uri).stat)).st_size for s in new]
        # Several at once: ffmpeg copying finishes segments faster than one upload at a
        # time takes them to a bucket.
        slots = asyncio.Semaphore(UPLOADS_AT_ONCE)

        async def put(segment: Segment) -> None:
            async with slots:
                await self._put(
                    f"{out.rendition.name}/{segment.uri}", directory / segment.uri, "video/iso.segment"
                )

        uploads = [asyncio.create_task(put(segment)) for segment in new]
        try:
            await asyncio.gather(*uploads)
        except BaseException:
            # The first failure as it is (VideoFailed, ClaimLost, ...), once the rest stopped.
            for upload in uploads:
                upload.cancel()
            await asyncio.gather(*uploads, return_exceptions=True)
            raise
        out.segments.extend(zip(new, sizes, strict=True))
        out.ended = listed.ended
        return len(new)

    async def _codecs(self, init: Path) -> str:
        """RFC 6381 codecs of what ffmpeg wrote: the video's from the init segment's avcC box."""
        data = await asyncio.to_thread(init.read_bytes)
        video = main_video(self.info)
        codecs = [avc_codec_of_init(data) or avc_codec(video["profile"] if video else None, None)]
        audio = main_audio(self.info)
        if audio is not None:
            # Copied AAC keeps its profile; ffmpeg's aac encoder makes AAC LC.
            codecs.append(aac_codec(audio["profile"] if can_copy_audio(self.info) else "LC"))
        return ",".join(codecs)

    async def _put(self, name: str, path: Path, content_type: str) -> None:
        await self.sink.put(name, path, content_type)
        await asyncio.to_thread(path.unlink, True)

    async def _report(self, percent: float) -> None:
        self.reported = percent
        await self.progress(round(percent, 1))

    # --- the results ------------------------------------------------------------------------

    def _variant(self, out: _Output) -> Variant:
        r = out.rendition
        segments = [(s.duration, size) for s, size in out.segments if s.duration > 0]
        full = [x for x in segments if x[0] >= self.settings.segment_seconds / 2] or segments
        peak = max((size * 8 / d for d, size in full), default=0)
        total = sum(d for d, _ in segments)
        average = sum(size for _, size in segments) * 8 / total if total else 0
        return Variant(
            f"{r.name}/index.m3u8", int(peak), int(average), r.width, r.height, r.frame_rate, out.codecs
        )

    @staticmethod
    def _described(out: _Output, variant: Variant) -> dict[str, Any]:
        r = out.rendition
        return {
            "name": r.name,
            "playlist": variant.uri,
            "width": r.width,
            "height": r.height,
            "bandwidth": variant.bandwidth,
            "average_bandwidth": variant.average_bandwidth,
            "codecs": variant.codecs,
            "copied": r.copy,
            "segments": len(out.segments),
        }


def _nonempty(path: Path) -> bool:
    try:
        return path.stat().st_size > 0
    except FileNotFoundError:
        return False


def _tree_size(root: Path) -> int:
    total = 0
    for directory, _, files in os.walk(root):
        for name in files:
            with contextlib.suppress(FileNotFoundError):  # renamed (.tmp -> final) meanwhile
                total += os.stat(os.path.join(directory, name)).st_size
    return total
