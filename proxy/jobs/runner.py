"""The loop that runs jobs: up to ``max_jobs`` claims at a time in this process.

It looks for work every ``poll_interval`` seconds, at once after wake() or when a
job ends, and never otherwise; a storage error is logged and the next look waits
longer (up to BACKOFF_MAX). Each claim's work runs in a task of its own, watched
for the claim being lost (re-queued, removed, taken over), which cancels it. Work
that raises fails its job with "internal error" (the traceback goes to the log
only). stop() stops looking, cancels the work and releases its claims, so that
another process may take them at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from proxy.jobs.base import Claim, ClaimLost, JobStore
from proxy.storage.base import StorageError

log = logging.getLogger(__name__)

BACKOFF_MAX = 60.0
# How often a running job's claim is checked for being lost (at most).
WATCH_INTERVAL = 1.0


class JobRunner:
    def __init__(
        self,
        store: JobStore,
        work: Callable[[Claim], Awaitable[None]],
        *,
        max_jobs: int = 1,
        poll_interval: float = 2.0,
    ) -> None:
        if max_jobs < 1 or poll_interval <= 0:
            raise ValueError("max_jobs must be at least 1 and poll_interval positive")
        self._store = store
        self._work = work
        self._max_jobs = max_jobs
        self._poll = poll_interval
        self._wake = asyncio.Event()
        self._running: set[asyncio.Task[None]] = set()
        self._loop_task: asyncio.Task[None] | None = None
        self._stopping = False

    async def start(self) -> None:
        self._stopping = False
        self._loop_task = asyncio.create_task(self._look_for_work())

    def wake(self) -> None:
        self._wake.set()

    async def stop(self) -> None:
        self._stopping = True
        if self._loop_task is not None:
            self._loop_task.cancel()
            await asyncio.wait([self._loop_task])
            self._loop_task = None
        running = list(self._running)
        for task in running:
            task.cancel()
        if running:
            await asyncio.wait(running)

    @property
    def busy(self) -> int:
        """How many jobs this runner is running now."""
        return len(self._running)

    async def _look_for_work(self) -> None:
        delay = self._poll
        while not self._stopping:
            self._wake.clear()
            try:
                while len(self._running) < self._max_jobs:
                    claim = await self._store.claim()
                    if claim is None:
                        break
                    task = asyncio.create_task(self._run(claim))
                    self._running.add(task)
                    task.add_done_callback(self._ended)
                delay = self._poll
            except (StorageError, OSError) as exc:
                # The backend, or this host (out of descriptors, disk): said in one line,
                # as the request handlers say them, and tried again later.
                delay = min(BACKOFF_MAX, delay * 2)
                log.warning("could not look for jobs (next look in %.0f s): %s", delay, exc)
            except Exception:
                delay = min(BACKOFF_MAX, delay * 2)
                log.exception("looking for jobs failed (next look in %.0f s)", delay)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), delay)

    def _ended(self, task: asyncio.Task[None]) -> None:
        self._running.discard(task)
        self._wake.set()  # a free slot: look again now

    async def _run(self, claim: Claim) -> None:
        key = claim.job.key
        work: asyncio.Future[None] = asyncio.ensure_future(self._work(claim))
        try:
            while not work.done():
                await asyncio.wait([work], timeout=WATCH_INTERVAL)
                if not work.done() and claim.lost():
                    log.warning("job %r was taken from this process: stopping its work", key)
                    work.cancel()
                    await asyncio.wait([work])
            if (
                not work.cancelled()
                and (exc := work.exception()) is not None
                and not isinstance(exc, ClaimLost)
            ):
                log.error("job %r failed", key, exc_info=exc)
                with contextlib.suppress(ClaimLost, StorageError):
                    await claim.failed("internal error")
        except asyncio.CancelledError:
            work.cancel()
            await asyncio.wait([work])
            raise
        finally:
            # Gives back a claim the work did not end (stop(), or work that forgot);
            # does nothing to one that ended or was lost.
            await claim.release()
