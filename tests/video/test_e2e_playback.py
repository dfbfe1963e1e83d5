"""The HLS a job made plays in a real browser, end to end: a real ``stream-proxy
serve`` process (its own job loop, ffmpeg and ffprobe from Debian) is given an
H.264/AAC MP4 (the copy path) and a VP9/Opus WebM (the encode path) by PUT; once
GET /videos/K says done, the page's player (/watch?key=K, proxy/page/static/
player.js) in Debian's headless Chromium plays the rendition with hls.js, seeks to
three positions and decodes a frame at each. Every playlist and segment the page
asked for went to the proxy's /files/K.video/<attempt>/... downloads and was
answered 200 or 206, and the proxy's access log has each of those requests.

On the local backend and on S3 (moto), where ffmpeg reads the source through a
presigned URL.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.conftest import Backend
from tests.video.e2e_support import (
    Clip,
    api,
    attempt_of,
    attempts_stored,
    derived_keys,
    ffprobe_json,
    key_path,
    make_clip,
    require_ffmpeg,
    stream_proxy,
)
from tests.web.browser_support import CHROMIUM_ARGS, require_chromium

try:
    from playwright.async_api import async_playwright
except ImportError:  # reported by require_chromium(): a failure under CI
    async_playwright = None  # type: ignore[assignment]

SECONDS = 12.0
SEEKS = [2.0, 6.0, 9.0]
WAIT_MS = 20_000
HAVE_CURRENT_DATA = 2
VIDEO = {"poll_interval": 0.5}

SOURCE = """
async (ms) => {
  const v = document.getElementById("video");
  const deadline = performance.now() + ms;
  while (!v.dataset.source && performance.now() < deadline) await new Promise((r) => setTimeout(r, 50));
  if (v.readyState < 1) await new Promise((resolve) => {
    setTimeout(resolve, Math.max(0, deadline - performance.now()));
    v.addEventListener("loadedmetadata", resolve, {once: true});
  });
  return {source: v.dataset.source || null, ready: v.readyState, duration: v.duration,
          width: v.videoWidth, height: v.videoHeight, error: v.error && v.error.code};
}
"""
PLAY = """
async ([seconds, ms]) => {
  const v = document.getElementById("video");
  v.muted = true;
  const deadline = performance.now() + ms;
  try { await v.play(); } catch (e) { return {ok: false, reason: String(e)}; }
  while (v.currentTime < seconds && !v.error && performance.now() < deadline) {
    await new Promise((r) => setTimeout(r, 50));
  }
  v.pause();
  return {ok: v.currentTime >= seconds, time: v.currentTime, error: v.error && v.error.code};
}
"""
SEEK = """
async ([t, ms]) => {
  const v = document.getElementById("video");
  const ok = await new Promise((resolve) => {
    const timer = setTimeout(() => resolve(false), ms);
    v.addEventListener("seeked", () => { clearTimeout(timer); resolve(true); }, {once: true});
    v.currentTime = t;
  });
  // The frame there decoded: HAVE_CURRENT_DATA or more, soon after the seek.
  const deadline = performance.now() + ms;
  while (v.readyState < 2 && !v.error && performance.now() < deadline) {
    await new Promise((r) => setTimeout(r, 50));
  }
  return {ok, time: v.currentTime, ready: v.readyState, error: v.error && v.error.code,
          source: v.dataset.source};
}
"""


@pytest.fixture(scope="module")
def chromium() -> Path:
    return require_chromium()


@pytest.fixture(scope="module")
def e2e_clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Clip]:
    require_ffmpeg()
    out = tmp_path_factory.mktemp("e2e-clips")
    return {
        "h264": make_clip(out / "clip.mp4", "h264", SECONDS),
        "vp9": make_clip(out / "clip.webm", "vp9", SECONDS),
    }


async def _play_in_browser(chromium: Path, url: str) -> tuple[list[tuple[str, str, int]], list[str]]:
    """Opens the player at ``url``, plays and seeks; the (method, URL, status) of every
    response the page got, and its console."""
    assert async_playwright is not None
    responses: list[tuple[str, str, int]] = []
    console: list[str] = []
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=str(chromium), headless=True, args=CHROMIUM_ARGS)
        try:
            context = await browser.new_context()
            page = await context.new_page()
            # Requests reach the proxy, not Chromium's cache (see tests/web/browser_support.py).
            cdp = await context.new_cdp_session(page)
            await cdp.send("Network.enable")
            await cdp.send("Network.setCacheDisabled", {"cacheDisabled": True})
            page.on("response", lambda r: responses.append((r.request.method, r.url, r.status)))
            page.on("console", lambda m: console.append(f"{m.type}: {m.text}"))
            page.on("pageerror", lambda e: console.append(f"uncaught: {e}"))

            async def call(script: str, arg: Any) -> dict[str, Any]:
                async with asyncio.timeout(3 * WAIT_MS / 1000 + 10):
                    result: dict[str, Any] = await page.evaluate(script, arg)
                return result

            answer = await page.goto(url)
            assert answer is not None and answer.status == 200
            state = await call(SOURCE, WAIT_MS)
            assert state["source"] == "hls", f"{state}\n{console}"
            assert state["ready"] >= 1 and state["error"] is None, f"{state}\n{console}"
            assert abs(state["duration"] - SECONDS) < 0.5, state
            played = await call(PLAY, [0.5, WAIT_MS])
            assert played["ok"] and played["error"] is None, f"{played}\n{console}"
            for target in SEEKS:
                seek = await call(SEEK, [target, WAIT_MS])
                assert (
                    seek["ok"]
                    and seek["error"] is None
                    and abs(seek["time"] - target) <= 0.5
                    and seek["ready"] >= HAVE_CURRENT_DATA
                    and seek["source"] == "hls"  # player.js falls back to the original on a fatal error
                ), f"seek to {target}: {seek}\n{console}"
            # hls.js may still be loading ahead; let its last answers arrive.
            await asyncio.sleep(0.5)
        finally:
            await browser.close()
    return responses, console


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["h264", "vp9"])
async def test_hls_plays_and_seeks_in_chromium(
    backend: Backend, kind: str, e2e_clips: dict[str, Clip], chromium: Path, tmp_path: Path
) -> None:
    clip = e2e_clips[kind]
    # A space in the name: the paths the API hands out must be URL-encoded.
    key = f"videos/{kind} clip{clip.path.suffix}"
    async with stream_proxy("serve", tmp_path, "serve", backend, VIDEO) as served, api(served) as client:
        await client.put(key, clip.path.read_bytes(), clip.content_type)
        done = await client.wait_ended(key)
        assert done["state"] == "done", f"{done}\n{served.tail()}"
        assert done["progress"] == 100 and done["reason"] is None, done
        attempt = attempt_of(done, key)
        prefix = f"/files/{key_path(key)}.video/{attempt}/"
        for name in ("poster", "thumbnail"):
            assert isinstance(done[name], str) and done[name].startswith(prefix), done
        renditions = done["renditions"]
        assert renditions and all(r["height"] <= clip.height for r in renditions), done
        # The copy path for H.264 (yuv420p) + AAC, an encode for the rest.
        assert renditions[0]["copied"] is (kind == "h264"), done
        info = done["info"]
        assert abs(float(info["duration"]) - SECONDS) < 0.1, info
        codecs = {s.get("codec") for s in info["streams"]}
        assert {clip.video_codec, clip.audio_codec} <= codecs, info
        # The poster is a JPEG of the video's size, read through /files/.
        poster = (await asyncio.to_thread(ffprobe_json, served.url + done["poster"]))["streams"][0]
        assert poster["codec_name"] == "mjpeg", poster
        assert (poster["width"], poster["height"]) == (clip.width, clip.height), poster
        assert attempts_stored(backend, key) == {attempt}, derived_keys(backend, key)

        responses, console = await _play_in_browser(chromium, f"{served.url}/watch?key={key_path(key)}")
        await asyncio.sleep(0.5)  # the access log line is written once the answer is out
        logged = {(line["method"], line["path"], line["status"]) for line in served.access_lines()}

    media = [(m, urlsplit(u), s) for m, u, s in responses if ".video/" in u or u.endswith((".m3u8", ".m4s"))]
    history = "\n".join(f"{m} {u.geturl()} {s}" for m, u, s in media) + "\n" + "\n".join(console)
    paths = [u.path for _, u, _ in media]
    # Every playlist and segment came from the proxy's downloads of this attempt, and was answered.
    assert all(u.netloc == urlsplit(served.url).netloc for _, u, _ in media), history
    assert all(p.startswith(prefix) for p in paths), history
    assert all(s in (200, 206) for _, _, s in media), history
    assert prefix + "master.m3u8" in paths, history
    assert any(p.endswith("/index.m3u8") for p in paths), history
    assert any(p.endswith("/init.mp4") for p in paths), history
    # The seeks reached across the video: at least three distinct media segments were read.
    assert len({p for p in paths if p.endswith(".m4s")}) >= 3, history
    # The original was not read: the player chose the rendition.
    assert not any(urlsplit(u).path == f"/files/{key_path(key)}" for _, u, _ in responses), history
    print(f"{key}: {len(media)} playlist and segment requests: {sorted(set(paths))}")
    # The proxy logged each of those requests with the same answer.
    for method, url, status in media:
        target = url.path + (f"?{url.query}" if url.query else "")
        assert (method, target, status) in logged, f"not in the access log: {method} {target} {status}"
