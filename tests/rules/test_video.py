"""Video rules (proxy/rules/video.py): sniffing, ffprobe's answer, copy or encode, renditions, progress."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.rules.video import (
    ProgressParser,
    can_copy_video,
    failure_reason,
    hls_args,
    input_args,
    main_video,
    plan_renditions,
    poster_args,
    poster_time,
    reduce_probe,
    scrub_line,
    sniff_container,
    target_bitrate,
)

SIGNATURES = {
    b"\x00\x00\x00\x20ftypisom\x00\x00\x02\x00isomiso2avc1mp41": "mp4",
    b"\x00\x00\x00\x14ftypqt  \x00\x00\x02\x00qt  ": "mov",
    b"\x00\x00\x00\x18ftyp3gp5\x00\x00\x00\x00": "3gp",
    b"\x00\x00\x00\x1cftypM4V \x00\x00\x00\x01M4V M4A ": "m4v",
    b"\x00\x00\x00\x08wide\x00\x00\x10\x00mdat": "mov",
    b"\x1a\x45\xdf\xa3\x9f\x42\x86\x81\x01\x42\xf7\x81\x01\x42\xf2\x81\x04"
    b"\x42\xf3\x81\x08\x42\x82\x84webm": "webm",
    b"\x1a\x45\xdf\xa3\xa3\x42\x86\x81\x01\x42\xf7\x81\x01\x42\x82\x88matroska": "matroska",
    b"RIFF\x00\x10\x00\x00AVI LIST": "avi",
    b"FLV\x01\x05\x00\x00\x00\x09": "flv",
    b"OggS\x00\x02\x00\x00": "ogg",
    b"\x00\x00\x01\xba\x44\x00\x04\x00": "mpeg-ps",
    bytes.fromhex("3026b2758e66cf11a6d900aa0062ce6c") + b"\x00" * 8: "asf",
    (b"\x47\x40\x00\x10" + b"\xff" * 184) * 3: "mpegts",
    (b"\x00\x00\x00\x00\x47\x40\x00\x10" + b"\xff" * 184) * 3: "mpegts",
}
NOT_MEDIA = [
    b"",
    b"\x00",
    b"%PDF-1.7\n",
    b"\x89PNG\r\n\x1a\n",
    b"\xff\xd8\xff\xe0\x00\x10JFIF",
    b"\x00\x00\x00\x1cftypheic\x00\x00\x00\x00mif1heic",  # a HEIF photo
    b"\x00\x00\x00\x1cftypavif\x00\x00\x00\x00avifmif1",
    b"RIFF\x24\x00\x00\x00WAVEfmt ",
    b"RIFF\x24\x00\x00\x00WEBPVP8 ",
    b"PK\x03\x04",
    b"GIF89a",
    b"\x47" + b"\x00" * 300,  # one sync byte is not a transport stream
    b"the moov is free: wide open",
    b"#EXTM3U\n#EXTINF:1,\nfile:///etc/passwd\n",  # an HLS playlist posing as a video
]


@pytest.mark.parametrize(("first", "name"), SIGNATURES.items())
def test_sniff_signatures(first: bytes, name: str) -> None:
    assert sniff_container(first) == name


@pytest.mark.parametrize("first", NOT_MEDIA)
def test_sniff_refuses_other_files(first: bytes) -> None:
    assert sniff_container(first) is None


@given(st.sampled_from(sorted(SIGNATURES.items())), st.binary(max_size=4096))
def test_sniff_reads_only_the_signature(case: tuple[bytes, str], rest: bytes) -> None:
    first, name = case
    assert sniff_container((first + rest)[:4096]) == name


# Text with no "G": 'G' is MPEG-TS's sync byte, and 377+ characters with a G at 0, 188 and
# 376 is taken for a transport stream (then ffprobe says it is not a video). Nothing else is.
@given(
    st.text(
        st.characters(min_codepoint=32, max_codepoint=126, exclude_characters="G") | st.sampled_from("\n\t")
    )
)
def test_sniff_never_takes_text_for_media(text: str) -> None:
    assert sniff_container(text.encode()[:4096]) is None


def _probe(
    video: dict[str, Any] | None = None, audio: dict[str, Any] | None = None, **fmt: Any
) -> dict[str, Any]:
    streams = []
    if video is not None:
        streams.append(
            {"index": 0, "codec_type": "video", "codec_name": "h264", "profile": "High", "width": 1920,
             "height": 1080, "pix_fmt": "yuv420p", "avg_frame_rate": "30000/1001",
             "r_frame_rate": "30000/1001", "sample_aspect_ratio": "1:1", "level": 40, "bit_rate": "4000000",
             **video}
        )  # fmt: skip
    if audio is not None:
        streams.append(
            {"index": len(streams), "codec_type": "audio", "codec_name": "aac", "profile": "LC",
             "channels": 2, "sample_rate": "48000", **audio}
        )  # fmt: skip
    return {
        "streams": streams,
        "format": {"format_name": "mov,mp4,m4a,3gp,3g2,mj2", "duration": "12.5", "size": "1000",
                   "bit_rate": "640", "tags": {"major_brand": "isom"}, **fmt},
    }  # fmt: skip


def test_reduce_probe() -> None:
    info = reduce_probe(_probe({}, {}))
    assert info["duration"] == 12.5 and info["container"] == "mp4" and info["size"] == 1000
    assert info["bitrate"] == 640
    video, audio = info["streams"]
    assert video == {
        "index": 0, "type": "video", "codec": "h264", "profile": "High", "bitrate": 4000000, "width": 1920,
        "height": 1080, "display_width": 1920, "display_height": 1080, "rotation": 0, "frame_rate": 29.97,
        "pix_fmt": "yuv420p", "level": 40,
    }  # fmt: skip
    assert (audio["codec"], audio["channels"], audio["sample_rate"]) == ("aac", 2, 48000)


def test_cover_art_is_not_a_video() -> None:
    info = reduce_probe(_probe({"codec_name": "mjpeg", "disposition": {"attached_pic": 1}}, {}))
    assert info["streams"][0]["type"] == "image"
    assert main_video(info) is None


def test_display_size_follows_aspect_and_rotation() -> None:
    anamorphic = main_video(
        reduce_probe(_probe({"width": 720, "height": 576, "sample_aspect_ratio": "16:11"}))
    )
    assert anamorphic is not None and (anamorphic["display_width"], anamorphic["display_height"]) == (
        1047,
        576,
    )
    rotated = _probe({"side_data_list": [{"side_data_type": "Display Matrix", "rotation": -90}]})
    video = main_video(reduce_probe(rotated))
    assert video is not None and (video["display_width"], video["display_height"], video["rotation"]) == (
        1080,
        1920,
        270,
    )


@pytest.mark.parametrize(
    ("video", "audio", "fmt", "copy"),
    [
        ({}, {}, {}, True),
        ({}, None, {}, True),  # no audio at all
        ({"pix_fmt": "yuv420p10le", "profile": "High 10"}, {}, {}, False),
        ({"pix_fmt": "yuv444p"}, {}, {}, False),
        ({"codec_name": "hevc"}, {}, {}, False),
        ({}, {"codec_name": "mp3"}, {}, False),
        ({}, {}, {"format_name": "mpegts"}, False),  # ADTS audio, Annex B video: encode
        ({}, {}, {"format_name": "matroska,webm"}, True),
        ({"side_data_list": [{"rotation": 90}]}, {}, {}, False),
    ],
)
def test_copy_or_encode(
    video: dict[str, Any], audio: dict[str, Any] | None, fmt: dict[str, Any], copy: bool
) -> None:
    assert can_copy_video(reduce_probe(_probe(video, audio, **fmt))) is copy


def test_ladder_below_the_source() -> None:
    info = reduce_probe(_probe({"width": 640, "height": 480}, {}))
    plan = plan_renditions(info, (720, 360, 240, 480, 360), copy=True)
    assert [(r.name, r.width, r.height, r.copy) for r in plan] == [
        ("v0", 640, 480, True), ("v1", 320, 240, False), ("v2", 480, 360, False),
    ]  # fmt: skip
    assert plan[0].max_bitrate == 4000000  # the source's own


@given(
    st.integers(16, 7680), st.integers(16, 4320), st.lists(st.integers(1, 4320), max_size=6), st.booleans()
)
def test_plan_properties(width: int, height: int, ladder: list[int], copy: bool) -> None:
    info = reduce_probe(_probe({"width": width, "height": height}, {}))
    plan = plan_renditions(info, tuple(ladder), copy)
    assert plan[0].name == "v0" and plan[0].copy is copy
    assert len({r.name for r in plan}) == len(plan)
    for r in plan[1:]:
        assert not r.copy and r.height < plan[0].height
        assert any(abs(r.height - h) <= 1 for h in ladder)  # the nearest even size
        assert r.width % 2 == 0 and r.height % 2 == 0 and r.max_bitrate > 0
    if not copy:
        assert plan[0].width % 2 == 0 and plan[0].height % 2 == 0
    heights = [r.height for r in plan[1:]]
    assert heights == sorted(set(heights))


def test_bitrates_grow_with_size() -> None:
    sizes = [(426, 240), (640, 360), (854, 480), (1280, 720), (1920, 1080), (3840, 2160)]
    rates = [target_bitrate(w, h, 30) for w, h in sizes]
    assert rates == sorted(rates) and 300_000 < rates[0] < 600_000 and 2_000_000 < rates[3] < 3_500_000
    assert target_bitrate(1280, 720, 60) < 2 * rates[3]


def test_poster_time() -> None:
    assert poster_time(None) == 0 and poster_time(0) == 0
    assert poster_time(1.0) == 0.5  # never in the last half of a short clip
    assert poster_time(7.0) == 2.0  # past a black first second
    assert poster_time(600.0) == 60.0  # 10%


def test_ffmpeg_arguments() -> None:
    info = reduce_probe(_probe({"width": 640, "height": 480}, {}))
    inp = input_args("https://s3.example/b/k?X-Amz-Signature=x", (("If-Match", '"e"'),))
    assert inp[-2:] == ["-i", "https://s3.example/b/k?X-Amz-Signature=x"]
    assert inp[inp.index("-headers") + 1] == 'If-Match: "e"\r\n'
    assert inp[inp.index("-protocol_whitelist") + 1] == "http,https,tcp,tls"
    local = input_args("/dev/fd/5", ())
    assert local[local.index("-protocol_whitelist") + 1] == "file"
    assert local[local.index("-format_whitelist") + 1] == "mov,matroska,avi,mpegts,flv,ogg,mpeg,asf"
    plan = plan_renditions(info, (240,), copy=True)
    args = hls_args(info, input_args("/dev/fd/5", ()), plan, "/t", 4.0)
    assert args[args.index("-c:v:0") + 1] == "copy" and args[args.index("-c:v:1") + 1] == "libx264"
    assert args[args.index("-c:a:0") + 1] == "copy"
    assert args[args.index("-force_key_frames:v:1") + 1] == "expr:gte(t,n_forced*4)"
    assert "-force_key_frames:v:0" not in args  # copied: the source's keyframes
    assert args[args.index("-var_stream_map") + 1] == "v:0,a:0 v:1,a:1"
    assert args[args.index("-hls_segment_type") + 1] == "fmp4"
    poster = poster_args(info, input_args("/dev/fd/5", ()), "/t/p.jpg", "/t/t.jpg")
    assert poster[:2] == ["-ss", "2.000"] and "thumbnail=n=59" in poster[poster.index("-filter_complex") + 1]


KEYS = st.sampled_from(["out_time_us", "out_time_ms", "progress", "speed"])
VALUES = st.integers(-10, 10**9).map(str) | st.sampled_from(["N/A", "continue", "end"])


@given(st.lists(st.tuples(KEYS, VALUES)))
def test_progress_is_monotonic_and_bounded(lines: list[tuple[str, str]]) -> None:
    parser = ProgressParser(12.5)
    seen = [parser.feed(f"{k}={v}\n") for k, v in lines]
    assert all(0 <= p <= 100 for p in seen) and seen == sorted(seen)


def test_progress_from_out_time() -> None:
    parser = ProgressParser(10.0)
    assert parser.feed("out_time_us=2500000") == 25.0
    assert parser.feed("progress=end") == 100.0 and parser.ended
    assert ProgressParser(None).feed("out_time_us=5") == 0


@given(
    st.text(max_size=60),
    st.sampled_from(["/tmp/x/y.mp4", "http://h:1/k?sig=S", "/dev/fd/7", "file:///etc/x"]),
)
def test_scrubbed_lines_hold_no_path_or_url(text: str, secret: str) -> None:
    line = scrub_line(f"[mov,mp4 @ 0x55d0] {text} {secret}: Invalid data", (secret,))
    assert secret not in line and "://" not in line and "/dev/" not in line and "0x55d0" not in line


def test_failure_reason_prefers_the_specific_message() -> None:
    stderr = ["[mov,mp4,m4a,3gp,3g2,mj2 @ 0x5564] moov atom not found",
              "/dev/fd/7: Invalid data found when processing input"]  # fmt: skip
    assert failure_reason(stderr, ("/dev/fd/7",)) == "moov atom not found"
    assert (
        failure_reason(["/x/y: Invalid data found when processing input"])
        == "<path>: Invalid data found when processing input"
    )
    assert failure_reason([]) == "no message"
