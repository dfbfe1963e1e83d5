"""Clips for the video tests, made once per session with ffmpeg's lavfi sources.

Each is short and small (7 s, 240p-480p) so the suite stays fast, and each starts with
one second of black, so a poster taken at the first frame would be black. Without
ffmpeg/ffprobe the video tests skip, except under CI=true where that is a failure.
"""

from __future__ import annotations

import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.conftest import require

SECONDS = 7
FPS = 25


def _video(size: str) -> str:
    """A second of black, then testsrc2: lavfi graph for the first input."""
    return (
        f"color=black:s={size}:r={FPS}:d=1,format=yuv420p[b];"
        f"testsrc2=s={size}:r={FPS}:d={SECONDS - 1},format=yuv420p[t];[b][t]concat=n=2:v=1:a=0"
    )


def _clip(out: Path, size: str, codecs: list[str]) -> list[str]:
    return [
        *("-f", "lavfi", "-i", _video(size)),
        *("-f", "lavfi", "-i", f"sine=frequency=440:sample_rate=48000:duration={SECONDS}"),
        *codecs,
        "-shortest",
        str(out),
    ]


def _run(args: list[str]) -> None:
    done = subprocess.run(
        ["ffmpeg", "-nostdin", "-hide_banner", "-v", "error", "-y", *args], capture_output=True, timeout=120
    )
    if done.returncode:
        pytest.fail(f"ffmpeg {' '.join(args)} failed: {done.stderr.decode(errors='replace')[-2000:]}")


X264 = ["-c:v", "libx264", "-preset", "veryfast", "-g", str(FPS), "-pix_fmt", "yuv420p"]


@pytest.fixture(scope="session")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """h264 (H.264/AAC MP4, moov at the end), vp9 (VP9/Opus WebM), p480 (H.264/AAC 640x480),
    audio (AAC only), text (text named .mp4), zero (empty .mp4), truncated (h264's first half)."""
    require(shutil.which("ffmpeg") is not None, "ffmpeg is not installed")
    require(shutil.which("ffprobe") is not None, "ffprobe is not installed")
    out = tmp_path_factory.mktemp("clips")
    paths = {
        "h264": out / "h264.mp4",
        "vp9": out / "vp9.webm",
        "p480": out / "p480.mp4",
        "audio": out / "audio.m4a",
    }
    jobs = [
        _clip(paths["h264"], "426x240", [*X264, "-c:a", "aac"]),
        _clip(
            paths["vp9"],
            "320x240",
            [
                "-c:v",
                "libvpx-vp9",
                "-deadline",
                "realtime",
                "-cpu-used",
                "8",
                "-b:v",
                "300k",
                "-c:a",
                "libopus",
            ],
        ),
        _clip(paths["p480"], "640x480", [*X264, "-c:a", "aac"]),
        ["-f", "lavfi", "-i", f"sine=duration={SECONDS}", "-c:a", "aac", str(paths["audio"])],
    ]
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(_run, jobs))
    paths["text"] = out / "text.mp4"
    paths["text"].write_text("This is not a video, whatever its name says.\n" * 50)
    paths["zero"] = out / "zero.mp4"
    paths["zero"].write_bytes(b"")
    data = paths["h264"].read_bytes()
    paths["truncated"] = out / "truncated.mp4"
    paths["truncated"].write_bytes(data[: len(data) // 2])
    return paths
