"""Whether the storage can serve, as one cheap look tells (S3: a HeadBucket; local:
the root is a writable directory), for the readiness probe (web/health.py). The look
is made at most once a second, whatever the number of probers, and probes that come
while it runs wait for it rather than start their own; a change is logged once, with
the reason, not at every probe.
"""

from __future__ import annotations

import asyncio
import logging

from proxy.storage.base import Checked

log = logging.getLogger(__name__)

CACHE_SECONDS = 1.0  # how long one look at the storage answers for
CHECK_TIMEOUT = 5.0  # a storage that answers slower than this is not ready


class Readiness:
    """The storage's last look, shared by every probe for CACHE_SECONDS."""

    def __init__(self, storage: object) -> None:
        self._storage = storage
        self._checked_at = float("-inf")
        self._reason: str | None = None  # why not ready; None: ready
        self._running: asyncio.Future[str | None] | None = None

    async def storage_problem(self) -> str | None:
        loop = asyncio.get_running_loop()
        if loop.time() - self._checked_at < CACHE_SECONDS:
            return self._reason
        if self._running is None:
            self._running = asyncio.ensure_future(self._check())
        # Shielded: a prober that gives up must not cancel the look the others await.
        return await asyncio.shield(self._running)

    async def _check(self) -> str | None:
        storage = self._storage
        reason: str | None = None
        try:
            if isinstance(storage, Checked):
                async with asyncio.timeout(CHECK_TIMEOUT):
                    await storage.check()
        except Exception as exc:  # whatever failed, the probe answers (503), never 500
            reason = "storage_unreachable"
            if self._reason is None:
                log.warning("not ready: the storage cannot be reached: %s", _describe(exc))
        finally:
            self._checked_at = asyncio.get_running_loop().time()
            self._running = None
        if reason is None and self._reason is not None:
            log.warning("ready again: the storage can be reached")
        self._reason = reason
        return reason


def _describe(exc: Exception) -> str:
    if isinstance(exc, TimeoutError):
        return f"no answer in {CHECK_TIMEOUT:g} s"
    return str(exc) or type(exc).__name__
