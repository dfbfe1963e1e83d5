"""What the browser tests share: Debian's Chromium driven by Playwright, the videos
ffmpeg makes for it, the page that plays one, and ``play_and_seek``, which plays,
seeks and checks every request Chromium made for the video. test_browser.py plays
through the proxy on both backends, tests/deploy through nginx; the findings on which
codecs and layouts play are in test_browser.py's docstring."""

from __future__ import annotations

import asyncio
import re
import shutil
import struct
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import require

try:
    from playwright.async_api import async_playwright
except ImportError:  # reported by the test through require(): a failure under CI
    async_playwright = None  # type: ignore[assignment]

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--autoplay-policy=no-user-gesture-required",
    "--disk-cache-size=1",
    "--media-cache-size=1",
]
DURATION = 30
SOURCE = ["-f", "lavfi", "-i", f"testsrc=duration={DURATION}:size=320x240:rate=25"]
# Noise makes the frames expensive to compress: ~2 Mbit/s, so ~7.5 MB in 30 s.
BULK = ["-vf", "noise=alls=20:allf=t", "-b:v", "2M", "-g", "25"]
SEEKS = [3.0, 17.5, 9.2, 26.0]
LOAD_TIMEOUT_MS = 15_000
PLAY_TIMEOUT_MS = 10_000
SEEK_TIMEOUT_MS = 15_000
HAVE_METADATA, HAVE_CURRENT_DATA = 1, 2


@dataclass(frozen=True)
class Variant:
    name: str  # the file's name and the test's id
    content_type: str
    encoder: str  # the ffmpeg encoder it needs
    codecs: str  # for canPlayType


VARIANTS = [
    Variant("h264-moov-at-end.mp4", "video/mp4", "libx264", 'video/mp4; codecs="avc1.42E01E"'),
    Variant("vp9-moov-at-end.mp4", "video/mp4", "libvpx-vp9", 'video/mp4; codecs="vp09.00.10.08"'),
    Variant("vp9.webm", "video/webm", "libvpx-vp9", 'video/webm; codecs="vp9"'),
]


def top_level_boxes(data: bytes) -> list[str]:
    """The ISO-BMFF boxes at the top of an MP4, in file order."""
    boxes, offset = [], 0
    while offset + 8 <= len(data):
        size, kind = struct.unpack(">I4s", data[offset : offset + 8])
        if size == 1:
            (size,) = struct.unpack(">Q", data[offset + 8 : offset + 16])
        elif size == 0:
            size = len(data) - offset
        if size < 8:
            raise ValueError(f"bad MP4 box size {size} at {offset}")
        boxes.append(kind.decode("latin-1"))
        offset += size
    return boxes


def ffmpeg_encoders() -> set[str]:
    out = subprocess.run(
        ["ffmpeg", "-hide_banner", "-encoders"], capture_output=True, text=True, check=True, timeout=30
    ).stdout
    # Lines look like " V....D libx264   libx264 H.264 / AVC ..." after a "------" rule.
    return {line.split()[1] for line in out.split("------", 1)[-1].splitlines() if len(line.split()) > 1}


def run_ffmpeg(jobs: list[list[str]]) -> None:
    """Runs ffmpeg command lines side by side (they use a core each)."""
    procs = [
        subprocess.Popen(
            ["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-y", *args],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        for args in jobs
    ]
    for args, proc in zip(jobs, procs, strict=True):
        _, err = proc.communicate(timeout=120)
        if proc.returncode != 0:
            pytest.fail(f"ffmpeg {' '.join(args)} failed:\n{err.decode(errors='replace')[-2000:]}")


def make_videos(out: Path, wanted: set[str] | None = None) -> dict[str, Path]:
    """The variants (``wanted`` of them, else all) this ffmpeg can make, by name, in ``out``."""
    require(shutil.which("ffmpeg") is not None, "ffmpeg is not installed")
    encoders = ffmpeg_encoders()
    wanted = wanted if wanted is not None else {v.name for v in VARIANTS}
    paths = {v.name: out / v.name for v in VARIANTS}
    encode: list[list[str]] = []
    if "libx264" in encoders and "h264-moov-at-end.mp4" in wanted:
        h264 = ["-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p"]
        encode.append([*SOURCE, *BULK, *h264, str(paths["h264-moov-at-end.mp4"])])
    vp9_wanted = wanted & {"vp9.webm", "vp9-moov-at-end.mp4"}
    if "libvpx-vp9" in encoders and vp9_wanted:
        vp9 = ["-c:v", "libvpx-vp9", "-deadline", "realtime", "-cpu-used", "8"]
        encode.append([*SOURCE, *BULK, *vp9, str(paths["vp9.webm"])])
    run_ffmpeg(encode)
    if "libvpx-vp9" in encoders and "vp9-moov-at-end.mp4" in wanted:
        # The same VP9 stream, remuxed: an MP4 with the moov at the end.
        run_ffmpeg([["-i", str(paths["vp9.webm"]), "-c", "copy", str(paths["vp9-moov-at-end.mp4"])]])
    made = {name: path for name, path in paths.items() if path.exists() and name in wanted}
    for name, path in made.items():
        if name.endswith(".mp4"):
            boxes = top_level_boxes(path.read_bytes())
            assert boxes.index("moov") > boxes.index("mdat"), f"{name}: moov is not at the end: {boxes}"
    return made


def require_chromium() -> Path:
    """Checked before the videos are made, so that a missing browser skips at once."""
    require(async_playwright is not None, "the playwright package is not installed")
    require(CHROMIUM.exists(), f"{CHROMIUM} is missing (Debian's chromium package)")
    return CHROMIUM


def page_html(key: str) -> str:
    """The page: the video, and helpers that page.evaluate() calls."""
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>stream-proxy video</title></head>
<body>
<video id="video" src="/files/{key}" preload="auto" muted></video>
<script>
const video = document.getElementById("video");
function snapshot() {{
  const e = video.error;
  return {{
    currentTime: video.currentTime, duration: video.duration, readyState: video.readyState,
    width: video.videoWidth, height: video.videoHeight, error: e && `${{e.code}}: ${{e.message}}`,
  }};
}}
// Resolves true when `event` fires, false on an error event or after `ms`.
function waitFor(event, ms, start) {{
  return new Promise((resolve) => {{
    const finish = (ok) => {{
      clearTimeout(timer);
      video.removeEventListener(event, onEvent);
      video.removeEventListener("error", onError);
      resolve(ok);
    }};
    const onEvent = () => finish(true);
    const onError = () => finish(false);
    const timer = setTimeout(() => finish(false), ms);
    video.addEventListener(event, onEvent);
    video.addEventListener("error", onError);
    if (start) start();
  }});
}}
async function loaded(ms) {{
  const ok = video.readyState >= HTMLMediaElement.HAVE_METADATA || !!video.error
    || await waitFor("loadedmetadata", ms);
  return {{ok, ...snapshot()}};
}}
async function playFor(seconds, ms) {{
  const deadline = performance.now() + ms;
  try {{
    await video.play();
  }} catch (e) {{
    return {{ok: false, reason: String(e), ...snapshot()}};
  }}
  while (video.currentTime < seconds && !video.error && performance.now() < deadline) {{
    await new Promise((r) => setTimeout(r, 50));
  }}
  video.pause();
  return {{ok: video.currentTime >= seconds, ...snapshot()}};
}}
async function seekTo(t, ms) {{
  const ok = await waitFor("seeked", ms, () => {{ video.currentTime = t; }});
  return {{ok, ...snapshot()}};
}}
</script>
</body></html>
"""


@dataclass
class Exchange:
    """One request of the browser for the video, as sent and answered on the wire."""

    range: str | None
    status: int | None  # None: no response (failed before one arrived)
    content_range: str | None
    failure: str | None

    def __str__(self) -> str:
        answer = f"{self.status} Content-Range: {self.content_range}" if self.status else "no response"
        failed = f" (failed: {self.failure})" if self.failure else ""
        return f"Range: {self.range} -> {answer}{failed}"


async def exchange_of(request: Any) -> Exchange:
    # all_headers() are the headers on the wire; request.headers are Blink's provisional
    # ones, which can differ: with the HTTP cache on, "bytes=65536-" went out as
    # "bytes=65536-917503" when the cache held the rest.
    sent = await request.all_headers()
    response = await request.response()
    got = await response.all_headers() if response is not None else {}
    return Exchange(
        range=sent.get("range"),
        status=response.status if response is not None else None,
        content_range=got.get("content-range"),
        failure=request.failure,
    )


def describe(exchanges: list[Exchange], console: list[str]) -> str:
    lines = [f"  {i}: {e}" for i, e in enumerate(exchanges)]
    return "\n".join(["requests for the video:", *lines, "browser console:", *console])


def expected_content_range(range_header: str, size: int) -> str | None:
    """What a single ``bytes=a-b`` / ``bytes=a-`` range must be answered with."""
    match = re.fullmatch(r"bytes=(\d+)-(\d*)", range_header)
    if match is None:
        return None
    start = int(match[1])
    end = min(int(match[2]), size - 1) if match[2] else size - 1
    return f"bytes {start}-{end}/{size}"


async def play_and_seek(chromium: Path, page_url: str, video_url: str, variant: Variant, size: int) -> None:
    """Open ``page_url`` (page_html of the video at ``video_url``, ``size`` bytes) in a
    fresh profile, play, seek to SEEKS, and check every request Chromium made for the
    video: the first ``bytes=0-``, each answered 206 with the Content-Range it asked
    for, ranges past the first, nothing failed but what Chromium itself cancelled."""
    assert async_playwright is not None
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=str(chromium), headless=True, args=CHROMIUM_ARGS)
        try:
            context = await browser.new_context()  # a fresh, empty profile
            page = await context.new_page()
            # Without Network.enable, setCacheDisabled is not applied to media requests:
            # Chromium's HTTP cache then keeps partial entries and revalidates them
            # (If-None-Match, answered 304) instead of asking for the ranges.
            cdp = await context.new_cdp_session(page)
            await cdp.send("Network.enable")
            await cdp.send("Network.setCacheDisabled", {"cacheDisabled": True})
            requests: list[Any] = []
            page.on("request", lambda r: requests.append(r) if r.url == video_url else None)
            console: list[str] = []
            page.on("console", lambda m: console.append(f"{m.type}: {m.text}"))

            async def call(script: str, *args: Any, ms: int) -> dict[str, Any]:
                async with asyncio.timeout(ms / 1000 + 10):
                    result: dict[str, Any] = await page.evaluate(script, list(args))
                return result

            async def collect() -> list[Exchange]:
                async with asyncio.timeout(15):
                    return [await exchange_of(r) for r in requests]

            async def log() -> str:
                return describe(await collect(), console)

            response = await page.goto(page_url)
            assert response is not None and response.status == 200

            state = await call("([ms]) => loaded(ms)", LOAD_TIMEOUT_MS, ms=LOAD_TIMEOUT_MS)
            support = await page.evaluate("(t) => video.canPlayType(t)", variant.codecs)
            require(bool(support), f"this Chromium cannot play {variant.codecs}")
            assert state["error"] is None, f"{state}\n{await log()}"
            assert state["ok"] and state["readyState"] >= HAVE_METADATA, f"{state}\n{await log()}"
            assert abs(state["duration"] - DURATION) < 0.5, state
            assert (state["width"], state["height"]) == (320, 240), state

            state = await call("([s, ms]) => playFor(s, ms)", 0.5, PLAY_TIMEOUT_MS, ms=PLAY_TIMEOUT_MS)
            assert state["ok"] and state["error"] is None, f"playback did not advance: {state}\n{await log()}"

            for target in SEEKS:
                state = await call("([t, ms]) => seekTo(t, ms)", target, SEEK_TIMEOUT_MS, ms=SEEK_TIMEOUT_MS)
                # A seeked event, no error, the frame there decoded. (An assert's message is
                # only evaluated when it fails: the log is not gathered otherwise.)
                assert (
                    state["ok"]
                    and state["error"] is None
                    and abs(state["currentTime"] - target) <= 0.5
                    and state["readyState"] >= HAVE_CURRENT_DATA
                ), f"seek to {target}: {state}\n{await log()}"

            exchanges = await collect()
        finally:
            await browser.close()

    history = describe(exchanges, console)
    assert exchanges, "the browser made no request for the video"
    first = exchanges[0]
    assert first.range == "bytes=0-" and first.status == 206, history
    ranged = [e for e in exchanges if e.range is not None]
    for e in ranged:
        # A failed request may have had no answer at all: Chromium cancels what it no
        # longer needs (net::ERR_ABORTED). Any other failure is the proxy's.
        if e.status is None:
            assert e.failure == "net::ERR_ABORTED", history
            continue
        assert e.status == 206, history
        expected = expected_content_range(e.range or "", size)
        assert expected is None or e.content_range == expected, history
    assert all(e.failure in (None, "net::ERR_ABORTED") for e in exchanges), history
    # The moov (MP4) or the cues (WebM) at the end, and the seeks past the preload.
    assert any(e.range != "bytes=0-" and e.status == 206 for e in ranged), history
