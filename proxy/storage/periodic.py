"""Background upkeep that runs for the life of a backend: the heartbeat of a writer,
the sweeps for what dead processes left behind."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from proxy.storage.base import StorageError

log = logging.getLogger(__name__)


async def every(
    interval: float, work: Callable[[], Awaitable[object]], what: str, *, now: bool = True
) -> None:
    """Run ``work`` every ``interval`` seconds (the first time at once if ``now``)
    until cancelled. A run that fails, however (the storage down, a file system
    error, a bug), is logged and the next one runs: upkeep that died would let
    leftovers pile up unnoticed."""
    if not now:
        await asyncio.sleep(interval)
    while True:
        try:
            await work()
        except StorageError as exc:
            log.warning("%s failed: %s", what, exc)
        except Exception:
            log.exception("%s failed", what)
        await asyncio.sleep(interval)


async def stop(task: asyncio.Task[None] | None) -> None:
    """Cancel a task started with every() and wait until it has ended."""
    if task is None:
        return
    task.cancel()
    await asyncio.wait([task])
