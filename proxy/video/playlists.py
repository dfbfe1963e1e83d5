"""HLS playlists: reading ffmpeg's media playlists as they grow, and writing the final ones. Pure.

ffmpeg rewrites a rendition's playlist after each segment; a segment it lists is
complete. The playlists that are stored are written here rather than copied, so their
names (``init.mp4``, ``segNNNNN.m4s``) and tags are ours whatever ffmpeg's version does.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

_EXTINF = re.compile(r"#EXTINF:([0-9.]+)")
_MAP = re.compile(r'#EXT-X-MAP:URI="([^"]+)"')
_SEGMENT = re.compile(r"seg[0-9]{5}\.m4s")
_AVC_PROFILES = {
    "constrained baseline": "42E0",
    "baseline": "4200",
    "main": "4D40",
    "extended": "5800",
    "high": "6400",
}


@dataclass(frozen=True)
class Segment:
    uri: str
    duration: float


@dataclass(frozen=True)
class MediaPlaylist:
    init: str | None
    segments: tuple[Segment, ...]
    ended: bool


def parse_media_playlist(text: str) -> MediaPlaylist:
    """The segments listed so far; a line still being written (no newline yet) is ignored."""
    complete = text[: text.rfind("\n") + 1]
    init, segments, duration, ended = None, [], None, False
    for line in complete.splitlines():
        line = line.strip()
        if m := _MAP.match(line):
            init = m.group(1)
        elif m := _EXTINF.match(line):
            duration = float(m.group(1))
        elif line == "#EXT-X-ENDLIST":
            ended = True
        elif line and not line.startswith("#") and duration is not None:
            if not _SEGMENT.fullmatch(line):
                raise ValueError("unexpected segment name in ffmpeg's playlist")
            segments.append(Segment(line, duration))
            duration = None
    if init is not None and not re.fullmatch(r"init(_[0-9]+)?\.mp4", init):
        raise ValueError("unexpected init name in ffmpeg's playlist")
    return MediaPlaylist(init, tuple(segments), ended)


def media_playlist(segments: tuple[Segment, ...], init: str = "init.mp4") -> str:
    """A VOD fMP4 media playlist (version 7: EXT-X-MAP in a playlist without I-frames only)."""
    target = max((math.ceil(s.duration - 1e-3) for s in segments), default=1)
    lines = [
        "#EXTM3U",
        "#EXT-X-VERSION:7",
        f"#EXT-X-TARGETDURATION:{max(1, target)}",
        "#EXT-X-MEDIA-SEQUENCE:1",
        "#EXT-X-PLAYLIST-TYPE:VOD",
        "#EXT-X-INDEPENDENT-SEGMENTS",
        f'#EXT-X-MAP:URI="{init}"',
    ]
    for s in segments:
        lines += [f"#EXTINF:{s.duration:.6f},", s.uri]
    lines.append("#EXT-X-ENDLIST")
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class Variant:
    uri: str  # "v0/index.m3u8"
    bandwidth: int  # peak segment bitrate, bits/s (what RFC 8216 asks BANDWIDTH to be)
    average_bandwidth: int
    width: int
    height: int
    frame_rate: float | None
    codecs: str


def master_playlist(variants: tuple[Variant, ...]) -> str:
    lines = ["#EXTM3U", "#EXT-X-VERSION:7", "#EXT-X-INDEPENDENT-SEGMENTS"]
    for v in variants:
        attrs = [
            f"BANDWIDTH={max(1, v.bandwidth)}",
            f"AVERAGE-BANDWIDTH={max(1, v.average_bandwidth)}",
            f"RESOLUTION={v.width}x{v.height}",
        ]
        if v.frame_rate:
            attrs.append(f"FRAME-RATE={v.frame_rate:.3f}")
        attrs.append(f'CODECS="{v.codecs}"')
        lines += ["#EXT-X-STREAM-INF:" + ",".join(attrs), v.uri]
    return "\n".join(lines) + "\n"


def avc_codec(profile: str | None, level: int | None) -> str:
    """RFC 6381's ``avc1.PPCCLL`` from ffprobe's profile name and level (High, 31 -> avc1.64001f)."""
    middle = _AVC_PROFILES.get((profile or "").lower(), "6400")
    return f"avc1.{middle}{max(0, min(level or 31, 255)):02x}"


def avc_codec_of_init(init: bytes) -> str | None:
    """``avc1.PPCCLL`` read from an init segment's ``avcC`` box: profile, constraint flags, level."""
    at = init.find(b"avcC")
    if at < 0 or len(init) < at + 8:
        return None
    profile, constraints, level = init[at + 5], init[at + 6], init[at + 7]
    return f"avc1.{profile:02x}{constraints:02x}{level:02x}"


def aac_codec(profile: str | None) -> str:
    """``mp4a.40.N``: 2 for AAC LC, 5 for HE-AAC, 29 for HE-AACv2."""
    p = (profile or "").upper()
    return "mp4a.40.29" if "V2" in p else "mp4a.40.5" if p.startswith("HE") else "mp4a.40.2"
