"""Removing expired resumable uploads, so abandoned ones leave nothing behind.

Every process runs the sweep; that is safe because removal takes the upload's lock
(an upload being written is skipped) and removing twice finds nothing the second time.
"""

from __future__ import annotations

import asyncio
import logging
import time

from proxy.metrics.definitions import TUS_EXPIRED
from proxy.storage.base import StorageError
from proxy.storage.resumable import ResumableStore, UploadLocked, UploadNotFound

log = logging.getLogger(__name__)


async def sweep(store: ResumableStore, now: float | None = None) -> int:
    """Remove every upload that expired before ``now``; return how many."""
    now = time.time() if now is None else now
    removed = 0
    for upload_id in await store.upload_ids():
        try:
            if not (await store.get(upload_id)).expired(now):
                continue
            async with store.lock(upload_id) as state:
                if state.expired(now):
                    await store.terminate(state)
                    removed += 1
                    TUS_EXPIRED.inc()
        except (UploadLocked, UploadNotFound):
            continue  # being written to, or removed by another process meanwhile
        except (StorageError, OSError, ValueError, TypeError, KeyError) as exc:
            # One unreadable upload must not stop the others from being swept.
            log.warning("could not sweep upload %s: %s", upload_id, exc)
    return removed


async def sweep_forever(store: ResumableStore, interval: float) -> None:
    """Sweep every ``interval`` seconds until cancelled. A sweep that fails, however
    (the storage down, a file system error, a bug), is logged and the next one runs:
    an unswept upload only waits, but a dead sweeper would let them all pile up."""
    while True:
        try:
            removed = await sweep(store)
            if removed:
                log.info("removed %d expired uploads", removed)
        except StorageError as exc:
            log.warning("sweep for expired uploads failed: %s", exc)
        except Exception:
            log.exception("sweep for expired uploads failed")
        await asyncio.sleep(interval)
