"""What the tests of the web page (proxy/page/, proxy/web/page.py) share: the proxy on
a random port with a recorder of the requests it answered (and, when asked, a delay
before each tus PATCH, so that a test can act while an upload is under way), and a
browser page that collects console errors and CSP violations.

The recorder and the delay are a middleware added to the real application, innermost
(after access control): the server's handlers and storage are the real ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from proxy.app import create_app
from proxy.config import Config
from proxy.web.server import ProxyRunner
from proxy.web.settings import ConnectionSettings

SCREENS = Path("/tmp/page-screens")  # screenshots for the note; not committed
WAIT_MS = 30_000  # how long the page may take to show what a step waits for
MiB = 1024 * 1024

# Reported to the console by the page's init script, so that the console collector
# sees CSP violations across reloads too.
CSP_LISTENER = """
document.addEventListener("securitypolicyviolation", (e) => {
  console.error(`securitypolicyviolation ${e.violatedDirective} ${e.blockedURI}`);
});
"""
# Records every value the upload rows' data-percent takes, as it changes.
WATCH_PERCENT = """
() => {
  window.percents = [];
  new MutationObserver((changes) => {
    for (const c of changes) window.percents.push(Number(c.target.dataset.percent));
  }).observe(document.getElementById("uploads"),
    {subtree: true, attributes: true, attributeFilter: ["data-percent"]});
}
"""


@dataclass(frozen=True)
class Seen:
    """One request the proxy answered."""

    method: str
    path: str
    offset: int | None  # the request's Upload-Offset
    received: int  # body bytes the server read
    status: int
    range: str | None


@dataclass
class Served:
    url: str
    app: web.Application
    seen: list[Seen] = field(default_factory=list)
    patch_delay: float = 0.0  # seconds each tus PATCH waits before the handler reads it

    def uploads(self, method: str | None = None) -> list[Seen]:
        return [s for s in self.seen if s.path.startswith("/uploads/") and method in (None, s.method)]


def _recorder(served: Served) -> Callable[..., Awaitable[web.StreamResponse]]:
    @web.middleware
    async def record(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        if request.method == "PATCH" and served.patch_delay:
            await asyncio.sleep(served.patch_delay)
        status = 0
        try:
            response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as exc:
            status = exc.status
            raise
        finally:
            offset = request.headers.get("Upload-Offset")
            served.seen.append(
                Seen(
                    request.method,
                    request.path,
                    int(offset) if offset and offset.isdigit() else None,
                    request.content.total_bytes,
                    status,
                    request.headers.get("Range"),
                )
            )

    return record


@contextlib.asynccontextmanager
async def serve(config: Config) -> AsyncIterator[Served]:
    app = create_app(config)
    served = Served("", app)
    app.middlewares.append(_recorder(served))
    runner = ProxyRunner(app, connections=ConnectionSettings.of(config), shutdown_timeout=1.0)
    await runner.setup()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    try:
        await web.SockSite(runner, sock).start()
        served.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        yield served
    finally:
        await runner.cleanup()
        sock.close()


def random_file(path: Path, size: int) -> str:
    """Writes ``size`` random bytes to ``path``; their SHA-256."""
    data = os.urandom(size)
    path.write_bytes(data)
    return hashlib.sha256(data).hexdigest()


@dataclass
class PageLog:
    """What the browser said while the test ran: console errors, uncaught exceptions
    and CSP violations. ``allowed`` are (status, path prefix) of refusals the test
    expects: Chromium reports each failed fetch on the console."""

    errors: list[str] = field(default_factory=list)
    allowed: list[tuple[int, str]] = field(default_factory=list)

    def on_console(self, message: Any) -> None:
        if message.type != "error":
            return
        text = message.text
        url = (message.location or {}).get("url", "")
        for status, path in self.allowed:
            if f"status of {status}" in text and path in url:
                return
        self.errors.append(f"{text} ({url})")

    def check(self) -> None:
        assert self.errors == [], "the browser reported errors:\n" + "\n".join(self.errors)


async def open_page(browser: Any, url: str, log: PageLog, *, width: int = 1100) -> tuple[Any, Any]:
    """A fresh context (empty storage) and a page at ``url`` that reports to ``log``."""
    context = await browser.new_context(viewport={"width": width, "height": 900})
    await context.add_init_script(CSP_LISTENER)
    page = await context.new_page()
    page.on("console", log.on_console)
    page.on("pageerror", lambda e: log.errors.append(f"uncaught: {e}"))
    response = await page.goto(url)
    assert url == "about:blank" or (response is not None and response.status == 200)
    return context, page


async def screenshot(page: Any, name: str) -> None:
    await asyncio.to_thread(SCREENS.mkdir, parents=True, exist_ok=True)
    await page.screenshot(path=str(SCREENS / name), full_page=True)
