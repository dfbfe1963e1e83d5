"""Video rules: what a media file is, what ffprobe said, and what ffmpeg should do. No I/O.

- :func:`sniff_container` names a media container from a file's first bytes (the
  upload hooks queue a job only for those; ffprobe decides the rest).
- :func:`reduce_probe` turns ``ffprobe -show_format -show_streams`` JSON into the
  info dict stored with the job; :func:`main_video` / :func:`main_audio` pick the
  streams the renditions are made from (cover art is not a video stream).
- :func:`can_copy_video` / :func:`can_copy_audio` decide copy versus encode;
  :func:`plan_renditions` the source rendition plus the ladder below it.
- :func:`poster_args` / :func:`hls_args` are ffmpeg's argument lists;
  :class:`ProgressParser` reads ``-progress`` output; :func:`scrub_line` makes an
  ffmpeg message fit to show (no paths, no URLs).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

SNIFF_BYTES = 4096
"""How many first bytes :func:`sniff_container` wants (it decides with fewer if the file is shorter)."""

# Demuxers ffmpeg/ffprobe may use (-format_whitelist): the containers sniff_container names.
# Without it a "video" that is really an HLS playlist or a concat list would make ffmpeg
# open other files or URLs of its choosing.
DEMUXERS = "mov,matroska,avi,mpegts,flv,ogg,mpeg,asf"

# ISO BMFF major brands of still images (HEIF, AVIF): not videos.
_IMAGE_BRANDS = {b"heic", b"heix", b"heim", b"heis", b"mif1", b"msf1", b"avif", b"avis", b"jpeg"}
# Boxes a QuickTime file from before "ftyp" existed may start with.
_QT_FIRST_BOXES = {b"moov", b"wide", b"pnot"}
_ASF_GUID = bytes.fromhex("3026b2758e66cf11a6d900aa0062ce6c")


def sniff_container(first: bytes) -> str | None:
    """The container of a file starting with ``first`` (its first :data:`SNIFF_BYTES`), or None.

    Names: mp4, mov, m4v, 3gp, webm, matroska, avi, mpegts, flv, ogg, mpeg-ps, asf.
    Only signatures are checked; whether there is a video stream is ffprobe's call.
    """
    if len(first) >= 12 and first[4:8] == b"ftyp" and int.from_bytes(first[:4], "big") >= 12:
        brand = first[8:12]
        if brand in _IMAGE_BRANDS:
            return None
        if brand == b"qt  ":
            return "mov"
        if brand.startswith((b"3gp", b"3g2")):
            return "3gp"
        if brand.startswith(b"M4V"):
            return "m4v"
        return "mp4"
    # Old QuickTime (no ftyp). Box sizes of text would be >= 0x20202020 ("    "), so
    # text with one of these words at byte 4 is not taken for a movie.
    if len(first) >= 8 and first[4:8] in _QT_FIRST_BOXES and 8 <= int.from_bytes(first[:4], "big") < 1 << 24:
        return "mov"
    if first.startswith(b"\x1a\x45\xdf\xa3"):
        # The EBML header's DocType element (0x4282) says which; it comes within the first bytes.
        return "webm" if b"\x42\x82\x84webm" in first[:64] else "matroska"
    if len(first) >= 12 and first.startswith(b"RIFF") and first[8:12] in (b"AVI ", b"AVIX"):
        return "avi"
    if first.startswith(b"FLV\x01"):
        return "flv"
    if first.startswith(b"OggS\x00"):
        return "ogg"
    if first.startswith(b"\x00\x00\x01\xba"):
        return "mpeg-ps"
    if first.startswith(_ASF_GUID):
        return "asf"
    if _ts_sync(first, 0, 188) or _ts_sync(first, 4, 192):
        return "mpegts"
    return None


def _ts_sync(first: bytes, offset: int, packet: int) -> bool:
    """MPEG-TS (188-byte packets) or M2TS (192, sync byte after a 4-byte timestamp): 3 sync bytes."""
    positions = [offset + i * packet for i in range(3)]
    return len(first) > positions[-1] and all(first[p] == 0x47 for p in positions)


# --- ffprobe's answer -------------------------------------------------------------------


def _number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _int(value: Any) -> int | None:
    number = _number(value)
    return None if number is None else int(number)


def _ratio(value: Any) -> float | None:
    """ffprobe's "30000/1001" (or an aspect's "16:11") as a float; None for "0/0" and nonsense."""
    if not isinstance(value, str) or not ("/" in value or ":" in value):
        return _number(value)
    num, _, den = value.replace(":", "/").partition("/")
    n, d = _number(num), _number(den)
    if n is None or not d or n <= 0:
        return None
    return n / d


def _rotation(stream: dict[str, Any]) -> int:
    for side in stream.get("side_data_list") or ():
        if isinstance(side, dict) and "rotation" in side:
            return int(_number(side["rotation"]) or 0) % 360
    return int(_number((stream.get("tags") or {}).get("rotate")) or 0) % 360


def _container(fmt: dict[str, Any], codecs: set[str]) -> str:
    name = str(fmt.get("format_name") or "")
    if name.startswith("mov,"):
        brand = str((fmt.get("tags") or {}).get("major_brand") or "").strip()
        if brand == "qt":
            return "mov"
        return "3gp" if brand.startswith(("3gp", "3g2")) else "mp4"
    if name.startswith("matroska"):
        webm = {"vp8", "vp9", "av1", "opus", "vorbis"}
        return "webm" if codecs and codecs <= webm else "matroska"
    return {"mpeg": "mpeg-ps"}.get(name, name.split(",")[0] or "unknown")


def _stream(raw: dict[str, Any]) -> dict[str, Any]:
    kind = str(raw.get("codec_type") or "data")
    disposition = raw.get("disposition") or {}
    if kind == "video" and disposition.get("attached_pic"):
        kind = "image"  # cover art: one picture, not a video stream
    out: dict[str, Any] = {
        "index": _int(raw.get("index")),
        "type": kind,
        "codec": raw.get("codec_name"),
        "profile": raw.get("profile"),
        "bitrate": _int(raw.get("bit_rate")),
    }
    if kind in ("video", "image"):
        width, height = _int(raw.get("width")) or 0, _int(raw.get("height")) or 0
        sar = _ratio(raw.get("sample_aspect_ratio")) or 1.0
        rotation = _rotation(raw)
        display_w, display_h = max(1, round(width * sar)) if width else 0, height
        if rotation in (90, 270):
            display_w, display_h = display_h, display_w
        frame_rate = _ratio(raw.get("avg_frame_rate")) or _ratio(raw.get("r_frame_rate"))
        out.update(
            width=width,
            height=height,
            display_width=display_w,
            display_height=display_h,
            rotation=rotation,
            frame_rate=round(frame_rate, 3) if frame_rate else None,
            pix_fmt=raw.get("pix_fmt"),
            level=_int(raw.get("level")),
        )
    elif kind == "audio":
        out.update(
            channels=_int(raw.get("channels")),
            sample_rate=_int(raw.get("sample_rate")),
            channel_layout=raw.get("channel_layout"),
        )
    return out


def reduce_probe(probed: dict[str, Any]) -> dict[str, Any]:
    """ffprobe's JSON reduced to the info dict (JSON-ready; see the readme for the fields)."""
    fmt = probed.get("format") or {}
    streams = [_stream(s) for s in probed.get("streams") or () if isinstance(s, dict)]
    duration = _number(fmt.get("duration"))
    if duration is None:
        durations = [_number(s.get("duration")) for s in probed.get("streams") or () if isinstance(s, dict)]
        duration = max((d for d in durations if d is not None), default=None)
    codecs = {str(s["codec"]) for s in streams if s["type"] in ("video", "audio") and s["codec"]}
    return {
        "duration": round(duration, 6) if duration is not None else None,
        "container": _container(fmt, codecs),
        "format_name": fmt.get("format_name"),
        "size": _int(fmt.get("size")),
        "bitrate": _int(fmt.get("bit_rate")),
        "streams": streams,
    }


def main_video(info: dict[str, Any]) -> dict[str, Any] | None:
    """The first real video stream (cover art excluded), or None: then it is not a video."""
    return next((s for s in info.get("streams", ()) if s["type"] == "video" and s.get("width")), None)


def main_audio(info: dict[str, Any]) -> dict[str, Any] | None:
    return next((s for s in info.get("streams", ()) if s["type"] == "audio"), None)


# Containers whose H.264 (avcC) and AAC (raw, not ADTS) go into fMP4 as they are.
_COPY_CONTAINERS = {"mp4", "mov", "m4v", "3gp", "matroska", "webm"}


def can_copy_audio(info: dict[str, Any]) -> bool:
    """AAC in a container that stores it raw (MPEG-TS/FLV would need bitstream filters: encode)."""
    audio = main_audio(info)
    return audio is not None and audio["codec"] == "aac" and info.get("container") in _COPY_CONTAINERS


def can_copy_video(info: dict[str, Any]) -> bool:
    """Copy only H.264 yuv420p (what every HLS player decodes), unrotated, with AAC or no audio."""
    video = main_video(info)
    if video is None or info.get("container") not in _COPY_CONTAINERS:
        return False
    if video["codec"] != "h264" or video["pix_fmt"] != "yuv420p" or video["rotation"]:
        return False
    return main_audio(info) is None or can_copy_audio(info)


# --- renditions ---------------------------------------------------------------------------

AUDIO_BITRATE = 128_000
MAX_FRAME_RATE = 60.0


@dataclass(frozen=True)
class Rendition:
    name: str  # the directory under the attempt: v0, v1, ...
    width: int
    height: int
    copy: bool  # the source's video stream as it is
    max_bitrate: int  # encoder's -maxrate (bits/s); the source's bitrate when copied
    frame_rate: float | None


def _even(value: float) -> int:
    return max(2, round(value / 2) * 2)


def target_bitrate(width: int, height: int, frame_rate: float | None) -> int:
    """A video bitrate cap for H.264 at this size: ~0.1 bit/pixel at 30 fps, more per pixel when small.

    Gives ~400 kb/s at 240p, ~1.3 Mb/s at 480p, ~2.5 Mb/s at 720p, ~5 Mb/s at 1080p (30 fps);
    60 fps gets ~1.4x (frames are more alike), not 2x.
    """
    fps = min(max(frame_rate or 30.0, 1.0), MAX_FRAME_RATE)
    pixels = width * height
    bits_per_pixel = 0.09 * (921_600 / max(pixels, 1)) ** 0.15
    return int(max(200_000, pixels * 30 * bits_per_pixel * (fps / 30) ** 0.5))


def plan_renditions(info: dict[str, Any], ladder: tuple[int, ...], copy: bool) -> tuple[Rendition, ...]:
    """The source's rendition (copied or encoded at its display size), then each ladder height
    strictly below the source's, smallest first, at the source's aspect ratio (even sizes)."""
    video = main_video(info)
    if video is None:
        raise ValueError("no video stream")
    width, height = video["display_width"], video["display_height"]
    fps = video.get("frame_rate")
    out_fps = min(fps, MAX_FRAME_RATE) if fps else None
    source_bitrate = video.get("bitrate") or info.get("bitrate") or 0
    if copy:
        first = Rendition("v0", width, height, True, int(source_bitrate), fps)
    else:
        w, h = _even(width), _even(height)
        first = Rendition("v0", w, h, False, target_bitrate(w, h, out_fps), out_fps)
    renditions = [first]
    for step in sorted({h for h in ladder if 0 < h < height}):
        w, h = _even(width * step / height), _even(step)
        if h >= first.height or h == renditions[-1].height:
            continue  # rounded to even, it is the source's or the previous one's size
        renditions.append(
            Rendition(f"v{len(renditions)}", w, h, False, target_bitrate(w, h, out_fps), out_fps)
        )
    return tuple(renditions)


# --- ffmpeg arguments ---------------------------------------------------------------------


def input_args(url: str, headers: tuple[tuple[str, str], ...]) -> list[str]:
    """The input options of ffmpeg and ffprobe: what they may open, and the HTTP headers to send."""
    args = ["-format_whitelist", DEMUXERS]
    if url.startswith(("http://", "https://")):
        # A stalled read fails in 30 s rather than at the time limit; a dropped connection
        # (S3 closes idle ones, e.g. while ffmpeg is paused for uploads) is opened again.
        args += ["-protocol_whitelist", "http,https,tcp,tls", "-rw_timeout", "30000000"]
        args += ["-reconnect", "1", "-reconnect_on_network_error", "1", "-reconnect_delay_max", "10"]
        if headers:
            args += ["-headers", "".join(f"{k}: {v}\r\n" for k, v in headers)]
    else:
        args += ["-protocol_whitelist", "file"]
    return [*args, "-i", url]


def poster_time(duration: float | None) -> float:
    """Where the poster's search starts: 10% in (past intros and fades from black), at least
    2 s in when the video is long enough, never in its last half for short ones."""
    if not duration or duration <= 0:
        return 0.0
    return round(max(duration * 0.1, min(2.0, duration / 2)), 3)


def poster_args(
    info: dict[str, Any], input_: list[str], poster: str, thumb: str, thumb_width: int = 320
) -> list[str]:
    """One ffmpeg run for both: seek, let ``thumbnail`` pick the most typical of ~2 s of frames
    (not a black or blurred one), scale to the display size, and a small copy of it."""
    video = main_video(info)
    if video is None:
        raise ValueError("no video stream")
    width, height = video["display_width"], video["display_height"]
    fps = video.get("frame_rate") or 25.0
    start = poster_time(info.get("duration"))
    window = max(1, min(int(fps * 2), 100, int(((info.get("duration") or 0) - start) * fps) or 1))
    small_w = thumb_width if width > thumb_width else max(2, width // 2)
    small_h = _even(height * small_w / width)
    graph = (
        f"[0:{video['index']}]thumbnail=n={window},scale={width}:{height},setsar=1,split=2[p][t];"
        f"[t]scale={small_w}:{small_h}[s]"
    )
    single = ["-frames:v", "1", "-q:v", "3", "-f", "image2", "-update", "1"]
    return [
        *(["-ss", f"{start:.3f}"] if start else []),
        *input_,
        "-filter_complex",
        graph,
        "-map",
        "[p]",
        *single,
        poster,
        "-map",
        "[s]",
        *single,
        thumb,
    ]


def hls_args(
    info: dict[str, Any],
    input_: list[str],
    renditions: tuple[Rendition, ...],
    out_dir: str,
    segment_seconds: float,
    *,
    threads: int = 0,
    preset: str = "veryfast",
) -> list[str]:
    """One ffmpeg run making every rendition as fMP4 HLS VOD in ``out_dir/v<N>/``.

    Encoded renditions get a keyframe forced at each segment boundary (so segments are
    ``segment_seconds`` long and aligned across renditions); copied video can only be cut
    at the source's own keyframes, so its segments are as long as its GOPs allow.
    """
    video, audio = main_video(info), main_audio(info)
    if video is None:
        raise ValueError("no video stream")
    args = [*input_, "-threads", str(threads)]
    copy_audio = can_copy_audio(info)
    stream_map = []
    for i, r in enumerate(renditions):
        args += ["-map", f"0:{video['index']}"]
        if audio is not None:
            args += ["-map", f"0:{audio['index']}"]
        stream_map.append(f"v:{i},a:{i}" if audio is not None else f"v:{i}")
        if r.copy:
            args += [f"-c:v:{i}", "copy"]
        else:
            args += [
                f"-c:v:{i}", "libx264", f"-preset:v:{i}", preset, f"-profile:v:{i}", "high",
                f"-crf:v:{i}", "23", f"-maxrate:v:{i}", str(r.max_bitrate),
                f"-bufsize:v:{i}", str(2 * r.max_bitrate), f"-pix_fmt:v:{i}", "yuv420p",
                f"-filter:v:{i}", f"scale={r.width}:{r.height},setsar=1",
                f"-force_key_frames:v:{i}", f"expr:gte(t,n_forced*{segment_seconds:g})",
            ]  # fmt: skip
            if r.frame_rate and video.get("frame_rate") and video["frame_rate"] > r.frame_rate:
                args += [f"-r:v:{i}", f"{r.frame_rate:g}"]
        if audio is not None:
            if copy_audio:
                args += [f"-c:a:{i}", "copy"]
            else:
                rate = audio.get("sample_rate")
                args += [f"-c:a:{i}", "aac", f"-b:a:{i}", str(AUDIO_BITRATE), f"-ac:a:{i}", "2"]
                args += [f"-ar:a:{i}", str(rate if rate in (44100, 48000) else 48000)]
    return [
        *args,
        "-f", "hls",
        "-hls_time", f"{segment_seconds:g}",
        # "event", not "vod": ffmpeg 5 writes a VOD playlist only at the end, an event one after
        # every segment, which is how finished segments are seen. The stored playlists are
        # written by proxy.video.playlists, as VOD.
        "-hls_playlist_type", "event",
        "-hls_segment_type", "fmp4",
        "-hls_flags", "temp_file+independent_segments",
        "-start_number", "1",
        "-hls_fmp4_init_filename", "init.mp4",
        "-hls_segment_filename", f"{out_dir}/v%v/seg%05d.m4s",
        "-var_stream_map", " ".join(stream_map),
        f"{out_dir}/v%v/index.m3u8",
    ]  # fmt: skip


# --- progress and messages -----------------------------------------------------------------


class ProgressParser:
    """Reads ffmpeg's ``-progress`` lines (key=value); :attr:`percent` is how far ``out_time`` is."""

    def __init__(self, duration: float | None) -> None:
        self.duration = duration if duration and duration > 0 else None
        self.percent = 0.0
        self.ended = False

    def feed(self, line: str) -> float:
        key, sep, value = line.strip().partition("=")
        if not sep:
            return self.percent
        if key in ("out_time_us", "out_time_ms") and self.duration:
            micros = _number(value)  # both are microseconds (out_time_ms is misnamed in ffmpeg)
            if micros is not None and micros >= 0:
                self.percent = max(self.percent, min(100.0, micros / 1e4 / self.duration))
        elif key == "progress" and value == "end":
            self.ended, self.percent = True, 100.0
        return self.percent


_CONTEXT = re.compile(r"^\[[^\]]*@ 0x[0-9a-f]+\]\s*")
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://\S*")
_PATH = re.compile(r"(?<![\w.])/[^\s:'\"]+")
_GENERIC = (
    "Invalid data found when processing input",
    "Conversion failed!",
    "Error opening input files",
    "Error opening output files",
)


def scrub_line(line: str, secrets: tuple[str, ...] = ()) -> str:
    """An ffmpeg message with no path, URL or other given string in it, and no ``[mov @ 0x...]``."""
    for secret in secrets:
        if secret:
            line = line.replace(secret, "input")
    line = _CONTEXT.sub("", line.strip())
    line = _URL.sub("<url>", line)
    return _PATH.sub("<path>", line)[:200].strip()


def failure_reason(stderr_lines: list[str], secrets: tuple[str, ...] = ()) -> str:
    """The most telling of ffmpeg's last messages: the last one that is not a generic summary."""
    lines = [scrub_line(line, secrets) for line in stderr_lines]
    lines = [line for line in lines if line]
    specific = [line for line in lines if not any(g in line for g in _GENERIC)]
    chosen = specific[-1] if specific else (lines[-1] if lines else "")
    return chosen or "no message"
