"""Cleanup work that must finish even when the request that started it is cancelled.

When a client goes away or the server shuts down, the request's task is cancelled
while it still has to abort its multipart upload or remove its temporary file. That
work runs as its own task, shielded from the cancellation, and the backend's
``close()`` waits for it before releasing its client, so a shutdown never strands
an upload.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from typing import Any, TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")


class Cleanups:
    def __init__(self) -> None:
        self._tasks: set[asyncio.Future[Any]] = set()

    async def run(self, work: Awaitable[T]) -> T:
        """Run ``work`` (a coroutine or a task) to completion even if the caller is
        cancelled meanwhile; return its result."""
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return await asyncio.shield(task)

    async def drain(self) -> None:
        if self._tasks:
            log.info("waiting for %d upload cleanups", len(self._tasks))
            await asyncio.gather(*self._tasks, return_exceptions=True)
