"""make() with real ffmpeg: the copy path, the encode path, a ladder; poster, playlists, sink order.

Sources are read the two ways the service uses: a file descriptor passed as /dev/fd/N,
and an HTTP URL (Range reads, If-Match required by the test server).
"""

from __future__ import annotations

import math
import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from proxy.video.making import Made, MakeSettings, Source, make, probe
from tests.video.conftest import FPS, SECONDS
from tests.video.support import (
    DirSink,
    ffprobe,
    http_source,
    master_variants,
    mean_luma,
    playlist,
    stream,
    video_packets,
)

SEGMENT = 2.0
FRAME = 1 / FPS


@contextmanager
def fd_source(path: Path) -> Iterator[Source]:
    fd = os.open(path, os.O_RDONLY)
    try:
        yield Source(f"/dev/fd/{fd}", pass_fds=(fd,))
    finally:
        os.close(fd)


def settings(tmp_path: Path, **changes: Any) -> MakeSettings:
    temp = tmp_path / "temp"
    temp.mkdir(exist_ok=True)
    return MakeSettings(**{"segment_seconds": SEGMENT, "temp_dir": str(temp), **changes})


async def run_make(
    s: MakeSettings, source: Source, out: Path
) -> tuple[Made, DirSink, list[float], dict[str, Any]]:
    info = await probe(s, source)
    sink = DirSink(out, alive_in=s.temp_dir)
    seen: list[float] = []

    async def progress(percent: float) -> None:
        seen.append(percent)

    made = await make(s, source, info, sink, progress)
    return made, sink, seen, info


def check_output(out: Path, sink: DirSink, made: Made, info: dict[str, Any], tmp_path: Path) -> None:
    """What every successful make() must have produced."""
    video = next(s for s in info["streams"] if s["type"] == "video")
    names = [r["name"] for r in made.renditions]
    # Order: poster and thumbnail first, each rendition's init before its segments,
    # its playlist after all its segments, and the master last of all.
    assert sink.order[:2] == ["poster.jpg", "thumb.jpg"]
    assert sink.order[-1] == "master.m3u8" and sink.order.count("master.m3u8") == 1
    for name in names:
        mine = [i for i, n in enumerate(sink.order) if n.startswith(f"{name}/")]
        assert sink.order[mine[0]] == f"{name}/init.mp4"
        assert sink.order[mine[-1]] == f"{name}/index.m3u8"
    assert sink.types["master.m3u8"] == "application/vnd.apple.mpegurl"
    assert sink.types["poster.jpg"] == "image/jpeg"
    # Poster: a JPEG of the display size, not the black first second; the thumbnail smaller.
    poster = stream(ffprobe(out / "poster.jpg"), "video")
    assert (poster["codec_name"], poster["width"], poster["height"]) == (
        "mjpeg",
        video["width"],
        video["height"],
    )
    thumb = stream(ffprobe(out / "thumb.jpg"), "video")
    assert thumb["width"] < poster["width"] and thumb["height"] < poster["height"]
    assert mean_luma(out / "poster.jpg") > 40
    # Playlists: each parses, ends, lists every file the sink got, segments ~SEGMENT long.
    variants = master_variants(out / "master.m3u8")
    assert [uri for _, uri in variants] == [f"{n}/index.m3u8" for n in names]
    for (attrs, uri), rendition in zip(variants, made.renditions, strict=True):
        assert attrs["RESOLUTION"] == f"{rendition['width']}x{rendition['height']}"
        assert int(attrs["BANDWIDTH"]) == rendition["bandwidth"] > 0
        assert attrs["CODECS"].startswith("avc1.")
        listed = playlist(out / uri)
        assert listed.ended and listed.init == "init.mp4"
        files = {p.name for p in (out / rendition["name"]).iterdir()}
        assert files == {"init.mp4", "index.m3u8"} | {s.uri for s in listed.segments}
        durations = [s.duration for s in listed.segments]
        assert math.isclose(sum(durations), SECONDS, abs_tol=2 * FRAME)
        assert all(abs(d - SEGMENT) <= FRAME for d in durations[:-1]), durations
    # The whole HLS decodes, end to end, from what the sink wrote.
    subprocess.run(
        ["ffmpeg", "-v", "error", "-nostdin", "-i", str(out / "master.m3u8"), "-map", "0", "-f", "null", "-"],
        check=True,
        timeout=120,
    )
    # No temporary file is left.
    assert list((tmp_path / "temp").iterdir()) == []


async def test_h264_aac_is_copied(clips: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    with fd_source(clips["h264"]) as source:
        made, sink, seen, info = await run_make(settings(tmp_path), source, out)
    assert info["container"] == "mp4"
    assert math.isclose(info["duration"], SECONDS, abs_tol=FRAME)
    video, audio = (next(s for s in info["streams"] if s["type"] == t) for t in ("video", "audio"))
    assert (video["codec"], video["width"], video["height"], video["pix_fmt"]) == (
        "h264",
        426,
        240,
        "yuv420p",
    )
    assert video["frame_rate"] == FPS and video["profile"] == "High"
    assert (audio["codec"], audio["channels"], audio["sample_rate"]) == ("aac", 1, 48000)
    assert made.copied and len(made.renditions) == 1 and made.renditions[0]["copied"]
    check_output(out, sink, made, info, tmp_path)
    # Copied, not re-encoded: the video packets are the source's, byte for byte.
    packets = video_packets(clips["h264"])
    assert len(packets) == SECONDS * FPS and video_packets(out / "master.m3u8") == packets
    source_v, made_v = stream(ffprobe(clips["h264"]), "video"), stream(ffprobe(out / "master.m3u8"), "video")
    for key in ("codec_name", "profile", "level", "width", "height", "pix_fmt"):
        assert made_v[key] == source_v[key], key
    assert seen[0] == 0 and seen[-1] == 100 and seen == sorted(seen)


async def test_vp9_opus_over_http_is_encoded(clips: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    async with http_source(clips["vp9"], pace=0.03) as (base, served):
        source = Source(f"{base}/clip?X-Amz-Signature=SECRET", headers=(("If-Match", served.etag),))
        made, sink, _, info = await run_make(settings(tmp_path), source, out)
    assert info["container"] == "webm"
    codecs = [(s["type"], s["codec"]) for s in info["streams"]]
    assert codecs == [("video", "vp9"), ("audio", "opus")]
    assert math.isclose(info["duration"], SECONDS, abs_tol=FRAME)
    assert not made.copied and not made.renditions[0]["copied"]
    check_output(out, sink, made, info, tmp_path)
    probed = ffprobe(out / "master.m3u8")
    video, audio = stream(probed, "video"), stream(probed, "audio")
    assert (video["codec_name"], video["pix_fmt"], video["width"], video["height"]) == (
        "h264",
        "yuv420p",
        320,
        240,
    )
    assert audio["codec_name"] == "aac"
    # Segments were put while ffmpeg still ran (the source is paced to last a few seconds).
    segment_puts = [
        alive for name, alive in zip(sink.order, sink.put_while_running, strict=True) if ".m4s" in name
    ]
    assert segment_puts[0] and not segment_puts[-1]
    # Every read (the sniffing one, ffprobe's and ffmpeg's) sent If-Match; ffmpeg seeks with Range.
    assert len(served.requests) >= 3
    assert all(r.get("If-Match") == served.etag for r in served.requests)
    assert any(r.get("Range", "").startswith("bytes=") for r in served.requests)


@pytest.mark.parametrize("ladder", [(240, 360, 720)])
async def test_ladder_stays_below_the_source(
    clips: dict[str, Path], tmp_path: Path, ladder: tuple[int, ...]
) -> None:
    out = tmp_path / "out"
    with fd_source(clips["p480"]) as source:
        made, sink, _, info = await run_make(settings(tmp_path, ladder=ladder), source, out)
    sizes = [(r["name"], r["width"], r["height"], r["copied"]) for r in made.renditions]
    assert sizes == [("v0", 640, 480, True), ("v1", 320, 240, False), ("v2", 480, 360, False)]
    check_output(out, sink, made, info, tmp_path)
    for r in made.renditions:
        probed = stream(ffprobe(out / r["playlist"]), "video")
        assert (probed["width"], probed["height"], probed["codec_name"]) == (r["width"], r["height"], "h264")
    # Encoded renditions are cut at the same instants (forced keyframes): a player can switch.
    cuts = [[s.duration for s in playlist(out / r["playlist"]).segments] for r in made.renditions[1:]]
    assert cuts[0] == cuts[1]
