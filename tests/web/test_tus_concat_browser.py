"""tus concatenation with the real client that needs it: tus-js-client (the page's
vendored copy) in Debian's Chromium, ``parallelUploads: 3``, against a real server."""

from __future__ import annotations

import hashlib
from pathlib import Path

import aiohttp

from tests.conftest import backend_for
from tests.web.browser_support import CHROMIUM_ARGS, require_chromium
from tests.web.page_support import WAIT_MS, MiB, PageLog, open_page, serve

try:
    from playwright.async_api import async_playwright
except ImportError:  # reported by require_chromium(): a failure under CI
    async_playwright = None  # type: ignore[assignment]

SIZE = 20 * MiB + 12345  # not a multiple of anything tus-js-client splits by
# A random blob made in the page, its SHA-256 by WebCrypto, and tus-js-client's
# parallel upload of it: three partials, then the final naming them.
PARALLEL_UPLOAD = """
async (size) => {
  const bytes = new Uint8Array(size);
  for (let i = 0; i < size; i += 65536) {
    crypto.getRandomValues(bytes.subarray(i, Math.min(i + 65536, size)));
  }
  const hash = new Uint8Array(await crypto.subtle.digest("SHA-256", bytes));
  const digest = Array.from(hash, (b) => b.toString(16).padStart(2, "0")).join("");
  const url = await new Promise((resolve, reject) => {
    const upload = new tus.Upload(new Blob([bytes]), {
      endpoint: location.origin + "/uploads/",
      parallelUploads: 3,
      metadata: {filename: "parallel.bin", filetype: "application/octet-stream"},
      retryDelays: null,
      onError: (error) => reject(String(error)),
      onSuccess: () => resolve(upload.url),
    });
    upload.start();
  });
  return {digest, url};
}
"""


async def test_tus_js_client_parallel_uploads(tmp_path: Path) -> None:
    chromium = require_chromium()
    backend = backend_for("local", tmp_path, None, None)
    log = PageLog()
    async with serve(backend.config) as served, async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=str(chromium), headless=True, args=CHROMIUM_ARGS)
        try:
            context, page = await open_page(browser, served.url + "/", log)
            page.set_default_timeout(WAIT_MS)
            await page.wait_for_function("() => typeof tus !== 'undefined'")
            result = await page.evaluate(PARALLEL_UPLOAD, SIZE)
            await context.close()
        finally:
            await browser.close()
        async with aiohttp.ClientSession() as session:
            head = await session.head(result["url"], headers={"Tus-Resumable": "1.0.0"})
            assert head.status == 200
            assert head.headers["Upload-Concat"].startswith("final;")
            assert head.headers["Upload-Offset"] == head.headers["Upload-Length"] == str(SIZE)
            key = head.headers["Object-Location"].removeprefix("/files/")
            got = await session.get(served.url + "/files/" + key)
            assert got.status == 200
            body = await got.read()
    # Three partials were made and written, then assembled into one object.
    assert hashlib.sha256(body).hexdigest() == result["digest"] == backend.view.metadata(key)["sha256"]
    assert len([s for s in served.uploads("POST") if s.status == 201]) == 4
    assert len({s.path for s in served.uploads("PATCH") if s.status == 204}) == 3
    assert backend.view.leftovers() == [f"upload {result['url'].rsplit('/', 1)[1]}"]
    log.check()
