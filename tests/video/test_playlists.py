"""HLS playlists (proxy/video/playlists.py): reading ffmpeg's as they grow, writing ours."""

from __future__ import annotations

import pytest

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

GROWING = (
    '#EXTM3U\n#EXT-X-VERSION:7\n#EXT-X-MAP:URI="init_0.mp4"\n#EXTINF:4.000000,\nseg00001.m4s\n#EXTINF:4.0'
)


def test_a_playlist_being_written_lists_only_complete_lines() -> None:
    listed = parse_media_playlist(GROWING)
    assert listed.init == "init_0.mp4" and listed.segments == (Segment("seg00001.m4s", 4.0),)
    assert not listed.ended
    assert parse_media_playlist(GROWING + "00,\nseg00002.m4")
    assert len(parse_media_playlist(GROWING + "00,\nseg00002.m4s\n#EXT-X-ENDLIST\n").segments) == 2
    assert parse_media_playlist(GROWING + "00,\nseg00002.m4s\n#EXT-X-ENDLIST\n").ended


@pytest.mark.parametrize("bad", ["#EXTINF:1,\n../../etc/passwd\n", '#EXT-X-MAP:URI="/etc/passwd"\n'])
def test_names_other_than_ffmpegs_are_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_media_playlist(bad)


def test_media_playlist_round_trips() -> None:
    segments = (Segment("seg00001.m4s", 4.0), Segment("seg00002.m4s", 4.04), Segment("seg00003.m4s", 1.2))
    text = media_playlist(segments)
    assert "#EXT-X-TARGETDURATION:5\n" in text and "#EXT-X-PLAYLIST-TYPE:VOD\n" in text
    assert text.endswith("#EXT-X-ENDLIST\n")
    listed = parse_media_playlist(text)
    assert listed.segments == segments and listed.init == "init.mp4" and listed.ended


def test_master_playlist() -> None:
    text = master_playlist(
        (Variant("v0/index.m3u8", 900_000, 700_000, 640, 480, 25.0, "avc1.64001e,mp4a.40.2"),)
    )
    assert text.splitlines()[-2:] == [
        "#EXT-X-STREAM-INF:BANDWIDTH=900000,AVERAGE-BANDWIDTH=700000,RESOLUTION=640x480,FRAME-RATE=25.000,"
        'CODECS="avc1.64001e,mp4a.40.2"',
        "v0/index.m3u8",
    ]


def test_codec_strings() -> None:
    assert avc_codec("High", 31) == "avc1.64001f"
    assert avc_codec("Constrained Baseline", 30) == "avc1.42E01e"
    assert avc_codec_of_init(b"....avcC\x01\x4d\x40\x1f\xff") == "avc1.4d401f"
    assert avc_codec_of_init(b"no box") is None
    assert (
        aac_codec("LC") == "mp4a.40.2"
        and aac_codec("HE-AAC") == "mp4a.40.5"
        and aac_codec("HE-AACv2") == "mp4a.40.29"
    )
