"""What the video parts share: settings, the source, the errors."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class MakeSettings:
    ffmpeg: str = "ffmpeg"
    ffprobe: str = "ffprobe"
    segment_seconds: float = 4.0
    ladder: tuple[int, ...] = ()  # extra rendition heights, e.g. (360, 720); never above the source
    time_limit: float = 3600.0  # seconds for one job's ffmpeg work; VideoFailed("timed out ...") past it
    temp_dir: str | None = None  # None: tempfile's default
    max_temp_bytes: int = 1 << 30  # bound on the job's temporary files; VideoFailed past it
    nice: int = 10  # ffmpeg/ffprobe run at this niceness
    threads: int = 0  # ffmpeg -threads (0: ffmpeg decides)


@dataclass(frozen=True)
class Source:
    url: str  # a path, /dev/fd/N, or an http(s) URL
    headers: tuple[tuple[str, str], ...] = ()  # sent with http(s) reads (If-Match)
    pass_fds: tuple[int, ...] = ()  # fds the child keeps (for /dev/fd/N)

    def secrets(self) -> tuple[str, ...]:
        """Strings never to show: the URL (a presigned one carries a signature), its path part."""
        base = self.url.split("?", 1)[0]
        return (self.url, base)

    def __repr__(self) -> str:  # a presigned URL's query is a credential: keep it out of logs
        return f"Source(url={self.url.split('?', 1)[0]!r}, headers={[k for k, _ in self.headers]})"


class VideoFailed(Exception):
    """str() is the user-facing reason (no paths, no URLs, no secrets)."""


class NotAVideo(VideoFailed):
    """The source holds no video stream (or is no media file at all)."""

    def __init__(self, reason: str = "not a video") -> None:
        super().__init__(reason)
