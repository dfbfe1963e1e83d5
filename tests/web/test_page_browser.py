"""The web page (proxy/page/) in a real browser: Debian's Chromium driven by
Playwright, as test_browser.py. One browser for the module; each test a fresh
context (empty storage). Every test also fails on a console error, an uncaught
exception or a CSP violation, but for the refusals it provokes on purpose.

Uploads go through the page's file input and tus-js-client; the proxy waits a moment
before each PATCH (page_support.serve), so that a test can pause, reload or cancel
while an upload is under way, and it records what it received. Screenshots of the
list, an upload in progress and the player go to /tmp/page-screens/.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

import aiohttp
import pytest
import pytest_asyncio

from proxy.config import VideoConfig
from proxy.rules.grants import Action
from proxy.storage.base import Storage
from tests.conftest import Backend, backend_for, require, wait_until
from tests.web.auth_support import SECRETS, auth_config, bearer, token_for
from tests.web.browser_support import CHROMIUM_ARGS, DURATION, make_videos, require_chromium, run_ffmpeg
from tests.web.page_support import (
    WAIT_MS,
    WATCH_PERCENT,
    MiB,
    PageLog,
    Served,
    open_page,
    random_file,
    screenshot,
    serve,
)

try:
    from playwright.async_api import async_playwright
except ImportError:  # reported by require_chromium(): a failure under CI
    async_playwright = None  # type: ignore[assignment]

module_loop = pytest.mark.asyncio(loop_scope="module")
CHUNK = 8 * MiB  # the page's tus chunk size (static/uploads.js)
SEEKS = [4.0, 21.5, 11.2]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def browser() -> AsyncIterator[Any]:
    chromium = require_chromium()
    async with async_playwright() as pw:
        launched = await pw.chromium.launch(executable_path=str(chromium), headless=True, args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            await launched.close()


@pytest.fixture
def local(tmp_path: Path) -> Backend:
    """For what the page does the same on both backends: the local one is enough."""
    return backend_for("local", tmp_path, None, None)


async def done_row(page: Any, name: str) -> Any:
    row = page.locator(f'li.upload[data-name="{name}"]')
    await page.wait_for_selector(f'li.upload[data-name="{name}"][data-state="done"]', timeout=WAIT_MS)
    return row


async def stored_key(row: Any) -> str:
    location = await row.get_attribute("data-object")
    assert location and location.startswith("/files/"), location
    return unquote(location.removeprefix("/files/"))


async def first_patch_done(served: Served, seconds: float = 30) -> None:
    await wait_until(lambda: any(s.status == 204 for s in served.uploads("PATCH")), seconds)


@module_loop
@pytest.mark.slow
async def test_upload_40_mib_through_the_page(backend: Backend, browser: Any, tmp_path: Path) -> None:
    path = tmp_path / "big-upload.bin"
    digest = random_file(path, 40 * MiB)
    log = PageLog()
    async with serve(backend.config) as served:
        served.patch_delay = 0.3
        context, page = await open_page(browser, served.url + "/", log)
        try:
            await page.evaluate(WATCH_PERCENT)
            await page.set_input_files("#file", str(path))
            await page.wait_for_function("() => window.percents.some((p) => p > 0 && p < 100)")
            await screenshot(page, f"upload-in-progress-{backend.name}.png")
            row = await done_row(page, path.name)
            percents = await page.evaluate("window.percents")
            assert percents == sorted(percents) and percents[-1] == 100, percents
            assert len([p for p in percents if 0 < p < 100]) >= 3, percents
            key = await stored_key(row)
            assert hashlib.sha256(backend.view.get(key)).hexdigest() == digest

            # The listing shows the upload's folder (the key template is {id}/{filename}),
            # and in it the object with its size.
            folder = key.split("/")[0]
            await page.get_by_role("button", name=f"Open folder {folder}").click()
            listed = page.locator(f'tr[data-key="{key}"]')
            await listed.wait_for(timeout=WAIT_MS)
            assert "40 MiB" in await listed.inner_text()
            await screenshot(page, f"list-{backend.name}.png")
        finally:
            await context.close()
    assert {s.status for s in served.uploads("PATCH")} == {204}
    log.check()


@module_loop
@pytest.mark.slow
async def test_reload_mid_upload_continues_from_the_stored_offset(
    backend: Backend, browser: Any, tmp_path: Path
) -> None:
    size = 40 * MiB
    path = tmp_path / "resumed.bin"
    digest = random_file(path, size)
    log = PageLog()
    async with serve(backend.config) as served:
        served.patch_delay = 0.5
        context, page = await open_page(browser, served.url + "/", log)
        try:
            await page.set_input_files("#file", str(path))
            await wait_until(lambda: len([s for s in served.uploads("PATCH") if s.status == 204]) >= 2, 30)
            await page.reload()  # cuts the PATCH in flight, if any
            await asyncio.sleep(1)  # the cut PATCH ends at the server
            before = len(served.seen)
            await page.set_input_files("#file", str(path))
            row = await done_row(page, path.name)
            assert await row.get_attribute("data-resumed") == "true"
            key = await stored_key(row)
        finally:
            await context.close()
    after = [s for s in served.seen[before:] if s.path.startswith("/uploads/")]
    methods = [s.method for s in after]
    assert "POST" not in methods and methods[0] == "HEAD", methods  # the same upload, asked where it is
    patches = [s for s in after if s.method == "PATCH"]
    resumed_at = patches[0].offset
    assert resumed_at is not None and resumed_at >= 2 * CHUNK, patches
    # After the reload only the rest was sent: the first part reached the server once.
    assert sum(s.received for s in patches) == size - resumed_at, patches
    # And before it nothing was sent twice but what the cut PATCH had in the server's
    # read buffer (the test's delay holds it there unread), which a cut drops.
    received = sum(s.received for s in served.uploads("PATCH"))
    assert size <= received <= size + MiB, served.uploads("PATCH")
    assert hashlib.sha256(backend.view.get(key)).hexdigest() == digest
    log.check()


@module_loop
@pytest.mark.slow
async def test_pause_resume_and_cancel(tmp_path: Path, browser: Any, local: Backend) -> None:
    kept, dropped = tmp_path / "paused.bin", tmp_path / "cancelled.bin"
    digest = random_file(kept, 24 * MiB)
    random_file(dropped, 24 * MiB)
    log = PageLog()
    async with serve(local.config) as served:
        served.patch_delay = 0.5
        context, page = await open_page(browser, served.url + "/", log)
        try:
            await page.set_input_files("#file", str(kept))
            await first_patch_done(served)
            await page.get_by_role("button", name=f"Pause {kept.name}").click()
            await page.wait_for_selector(f'li[data-name="{kept.name}"][data-state="paused"]')
            await asyncio.sleep(1.5)  # the PATCH cut by the pause ends at the server
            paused_at = len(served.seen)
            await asyncio.sleep(1.5)
            assert len(served.seen) == paused_at, "requests went on while paused"
            await page.get_by_role("button", name=f"Resume {kept.name}").click()
            row = await done_row(page, kept.name)
            resumed = [s.method for s in served.seen[paused_at:]]
            assert resumed[0] == "HEAD" and "POST" not in resumed, resumed
            key = await stored_key(row)
            assert hashlib.sha256(local.view.get(key)).hexdigest() == digest

            # A finished upload's record stays (it answers HEAD) until it expires.
            finished = {f"upload {s.path.split('/')[-1]}" for s in served.uploads("PATCH")}
            served.seen.clear()
            await page.set_input_files("#file", str(dropped))
            await first_patch_done(served)
            assert local.view.leftovers() != []  # the upload is stored as it goes
            await page.get_by_role("button", name=f"Cancel {dropped.name}").click()
            await page.wait_for_selector(
                f'li[data-name="{dropped.name}"][data-state="cancelled"]', timeout=WAIT_MS
            )
            assert any(s.method == "DELETE" and s.status == 204 for s in served.uploads())
            # Nothing of the cancelled upload stays: no state, no bytes, no temporary file.
            await wait_until(lambda: local.view.leftovers() == sorted(finished), 10)
            assert local.view.keys() == [key]
        finally:
            await context.close()
    log.check()


async def _put(
    session: aiohttp.ClientSession,
    url: str,
    key: str,
    headers: dict[str, str] | None = None,
    data: bytes = b"",
) -> None:
    answer = await session.put(f"{url}/files/{key}", data=data or key.encode(), headers=headers or {})
    assert answer.status == 201, await answer.text()


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_videos(tmp_path_factory.mktemp("page-videos"), {"h264-moov-at-end.mp4", "vp9.webm"})


SEEK = """
async ([t, ms]) => {
  const v = document.getElementById("video");
  const ok = await new Promise((resolve) => {
    const timer = setTimeout(() => resolve(false), ms);
    v.addEventListener("seeked", () => { clearTimeout(timer); resolve(true); }, {once: true});
    v.currentTime = t;
  });
  return {ok, time: v.currentTime, ready: v.readyState, error: v.error && v.error.code};
}
"""
LOADED = """
async (ms) => {
  const v = document.getElementById("video");
  if (v.readyState < 1) await new Promise((resolve) => {
    setTimeout(resolve, ms);
    v.addEventListener("loadedmetadata", resolve, {once: true});
  });
  return {ready: v.readyState, duration: v.duration, source: v.dataset.source};
}
"""


@module_loop
@pytest.mark.parametrize("name", ["h264-moov-at-end.mp4", "vp9.webm"])
async def test_player_plays_and_seeks(
    name: str, browser: Any, videos: dict[str, Path], tmp_path: Path, local: Backend
) -> None:
    require(name in videos, f"this ffmpeg cannot make {name}")
    key = f"videos/{name}"
    log = PageLog(allowed=[(404, "/videos/")])  # video off: no HLS renditions, the original plays
    async with serve(replace(local.config, video=VideoConfig(enabled=False))) as served:
        async with aiohttp.ClientSession() as session:
            content_type = "video/mp4" if name.endswith(".mp4") else "video/webm"
            data = videos[name].read_bytes()
            await _put(session, served.url, key, {"Content-Type": content_type}, data)
        served.seen.clear()
        context, page = await open_page(browser, "about:blank", log)
        try:
            # As in browser_support.play_and_seek: without this Chromium's HTTP cache
            # keeps partial entries and revalidates them (304) instead of asking for ranges.
            cdp = await context.new_cdp_session(page)
            await cdp.send("Network.enable")
            await cdp.send("Network.setCacheDisabled", {"cacheDisabled": True})
            await page.goto(f"{served.url}/watch?key={quote(key)}")
            state = await page.evaluate(LOADED, 15_000)
            assert state["ready"] >= 1 and abs(state["duration"] - DURATION) < 0.5, state
            assert state["source"] == "original"
            for target in SEEKS:
                seek = await page.evaluate(SEEK, [target, 15_000])
                assert seek["ok"] and seek["error"] is None and abs(seek["time"] - target) <= 0.5, seek
            await screenshot(page, f"player-{name}.png")
        finally:
            await context.close()
    reads = [s for s in served.seen if s.path == f"/files/{key}"]
    assert len(reads) >= 2 and all(s.method == "GET" and s.status == 206 for s in reads), reads
    assert any(s.range not in (None, "bytes=0-") for s in reads), reads
    assert [s.status for s in served.seen if s.path.startswith("/videos/")] == [404]
    log.check()


@module_loop
async def test_delete_an_object_and_a_folder(local: Backend, browser: Any) -> None:
    log = PageLog()
    async with serve(local.config) as served:
        async with aiohttp.ClientSession() as session:
            for key in ("keep.txt", "gone.txt", "folder/a.txt", "folder/deeper/b.txt"):
                await _put(session, served.url, key)
        context, page = await open_page(browser, served.url + "/", log)
        asked: list[str] = []
        try:
            accept = True

            async def answer(dialog: Any) -> None:
                asked.append(dialog.message)
                await (dialog.accept() if accept else dialog.dismiss())

            page.on("dialog", answer)
            await page.get_by_role("button", name="Delete gone.txt").click()
            await page.locator('tr[data-key="gone.txt"]').wait_for(state="detached", timeout=WAIT_MS)
            assert sorted(local.view.keys()) == ["folder/a.txt", "folder/deeper/b.txt", "keep.txt"]

            folder_delete = hasattr(Storage, "delete_prefix")  # DELETE /files/{prefix}/ (issue 14)
            accept = folder_delete
            await page.get_by_role("button", name="Delete folder folder").click()
            await wait_until(lambda: len(asked) == 2)
            if folder_delete:
                await page.locator('tr[data-folder="folder/"]').wait_for(state="detached", timeout=WAIT_MS)
                assert local.view.keys() == ["keep.txt"]
            else:
                assert len(local.view.keys()) == 3
        finally:
            await context.close()
    assert asked == ["Delete “gone.txt”?", "Delete 2 objects under “folder/”?"]
    log.check()


@module_loop
async def test_auth_messages_and_tokens(local: Backend, browser: Any, tmp_path: Path) -> None:
    small = tmp_path / "small.bin"
    digest = random_file(small, 3 * MiB)
    config = auth_config(local.config)
    # The refusals this test provokes, which Chromium reports on the console.
    log = PageLog(allowed=[(401, "/files"), (403, "/uploads/")])
    async with serve(config) as served:
        async with aiohttp.ClientSession() as session:
            await _put(session, served.url, "listed.txt", bearer("full"))
        context, page = await open_page(browser, served.url + "/", log, width=360)
        try:
            message = page.locator("#message")
            await page.wait_for_selector("#message:not([hidden])")
            assert "Sign-in needed" in await message.inner_text()
            assert "needs credentials" in await message.inner_text()

            await page.get_by_label("Access token").fill(SECRETS["reader"])
            await page.get_by_role("button", name="Use token").click()
            await page.locator('tr[data-key="listed.txt"]').wait_for(timeout=WAIT_MS)
            await page.set_input_files("#file", str(small))
            await page.wait_for_selector(f'li[data-name="{small.name}"][data-state="error"]', timeout=WAIT_MS)
            refused = await message.inner_text()
            assert "Not allowed" in refused and "do not allow write" in refused, refused

            await page.get_by_label("Access token").fill(SECRETS["full"])
            await page.get_by_role("button", name="Use token").click()
            await page.get_by_role("button", name=f"Retry {small.name}").click()
            key = await stored_key(await done_row(page, small.name))
            assert hashlib.sha256(local.view.get(key)).hexdigest() == digest
            await page.get_by_role("button", name="Open folder videos").wait_for(timeout=WAIT_MS)
            await screenshot(page, "list-360px-with-token.png")
        finally:
            await context.close()

        # Through a signed URL for uploads under videos/: the page keeps the signature.
        signature = token_for(Action.WRITE, "videos/", prefix=True)
        signed_log = PageLog()
        context, page = await open_page(browser, f"{served.url}/s/{signature}/", signed_log)
        try:
            # What the link is for, instead of a listing it cannot have.
            await page.wait_for_selector("#message:not([hidden])")
            said = await page.locator("#message").inner_text()
            assert said.startswith("This link lets you upload files under “videos/” until"), said
            assert await page.locator("#list-section").is_hidden()
            await page.set_input_files("#file", str(small))
            key = await stored_key(await done_row(page, small.name))
            assert hashlib.sha256(local.view.get(key)).hexdigest() == digest
        finally:
            await context.close()
        created = [s.path for s in served.seen if s.method == "POST" and s.status == 201]
        assert created == ["/uploads/", f"/s/{signature}/uploads/"], created
        assert not any(s.path.startswith(f"/s/{signature}/files") for s in served.seen)
    log.check()
    signed_log.check()


@module_loop
async def test_player_prefers_an_hls_rendition(
    local: Backend, browser: Any, videos: dict[str, Path], tmp_path: Path
) -> None:
    """GET /videos/{key} is a later issue's: the browser's request for it is answered
    here (page.route) as that endpoint will, pointing at a rendition ffmpeg made and
    the proxy stores, so that hls.js is seen to play under the page's CSP (its worker
    and MediaSource are blob: URLs) from the proxy's own downloads."""
    require("h264-moov-at-end.mp4" in videos, "this ffmpeg cannot make H.264")
    out = tmp_path / "hls"
    out.mkdir()
    hls_args = ["-f", "hls", "-hls_time", "4", "-hls_playlist_type", "vod", str(out / "index.m3u8")]
    run_ffmpeg([["-i", str(videos["h264-moov-at-end.mp4"]), "-c", "copy", *hls_args]])
    key = "videos/clip.mp4"
    log = PageLog()
    async with serve(local.config) as served:
        async with aiohttp.ClientSession() as session:
            await _put(session, served.url, key, {"Content-Type": "video/mp4"}, b"not a video")
            for part in sorted(out.iterdir()):
                kind = "application/vnd.apple.mpegurl" if part.suffix == ".m3u8" else "video/mp2t"
                await _put(
                    session, served.url, f"hls/clip/{part.name}", {"Content-Type": kind}, part.read_bytes()
                )
        served.seen.clear()
        context, page = await open_page(browser, "about:blank", log)
        try:
            rendition = json.dumps({"state": "done", "hls": "/files/hls/clip/index.m3u8"})
            await page.route(
                "**/videos/**",
                lambda route: route.fulfill(status=200, body=rendition, content_type="application/json"),
            )
            await page.goto(f"{served.url}/watch?key={quote(key)}")
            state = await page.evaluate(LOADED, 15_000)
            assert state["source"] == "hls" and abs(state["duration"] - DURATION) < 0.5, state
            for target in SEEKS:
                seek = await page.evaluate(SEEK, [target, 15_000])
                assert seek["ok"] and seek["error"] is None and abs(seek["time"] - target) <= 0.5, seek
        finally:
            await context.close()
    read = {s.path for s in served.seen if s.status == 200}
    assert "/files/hls/clip/index.m3u8" in read and len(read) >= 3, read
    assert f"/files/{key}" not in {s.path for s in served.seen}  # the original was not touched
    log.check()


DROP = """
() => {
  const dt = new DataTransfer();
  dt.items.add(new File([new Uint8Array(1000).fill(7)], "first.bin", {type: "application/octet-stream"}));
  dt.items.add(new File(["dropped text"], "second.txt", {type: "text/plain"}));
  return dt;
}
"""


@module_loop
async def test_dropping_several_files_uploads_each(local: Backend, browser: Any) -> None:
    log = PageLog()
    async with serve(local.config) as served:
        context, page = await open_page(browser, served.url + "/", log)
        try:
            # Every control is reached with the keyboard, in reading order.
            focused = []
            for _ in range(8):
                await page.keyboard.press("Tab")
                focused.append(
                    await page.evaluate("document.activeElement.id || document.activeElement.textContent")
                )
            assert focused[:7] == ["token", "Use token", "token-clear", "file", "All files", "prefix", "Show"]
            await page.dispatch_event("#drop", "drop", {"dataTransfer": await page.evaluate_handle(DROP)})
            first = await stored_key(await done_row(page, "first.bin"))
            second = await stored_key(await done_row(page, "second.txt"))
        finally:
            await context.close()
    assert local.view.get(first) == b"\x07" * 1000
    assert local.view.get(second) == b"dropped text"
    assert local.view.metadata(second)["content_type"].startswith("text/plain")
    log.check()
