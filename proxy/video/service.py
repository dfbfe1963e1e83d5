"""Videos as the rest of the proxy sees them: what an upload or a delete of a source
object does to its job and derived files, what GET/POST/DELETE /videos/ do, and the
work a job runner runs for each claimed job.

A job is known by its source key and remembers the source's ETag. Whenever the job
and the source disagree (the source is gone, or is another version than the job's,
because a hook was lost in a crash), the job is put right when it is next looked at:
by GET /videos/ or by the runner. Derived files: proxy/video/outputs.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from proxy.jobs.base import Claim, ClaimLost, Job, JobNotFound, JobStore
from proxy.jobs.runner import JobRunner
from proxy.rules.keys import InvalidKey
from proxy.rules.video import SNIFF_BYTES, sniff_container
from proxy.storage.base import FileBacked, ObjectInfo, ObjectNotFound, Presigned, Storage, StorageError
from proxy.video.making import MakeSettings, Source, VideoFailed, make, probe
from proxy.video.outputs import StorageSink, attempt_of, attempt_prefix, check_room, derived_prefix

log = logging.getLogger(__name__)

# Seconds between two progress reports of a job (each is a write to the backend).
REPORT_INTERVAL = 1.0
# Seconds a presigned URL outlives the job's time limit (ffmpeg may reopen it late).
URL_MARGIN = 600
# Seconds a cancelled job gets to remove what its attempt stored.
CLEANUP_WAIT = 30.0


@dataclass(frozen=True)
class RunSettings:
    """How this process runs jobs (None in VideoService: it runs none)."""

    max_jobs: int = 1
    poll_interval: float = 2.0


class VideoService:
    """Holds the storage, the job store, the making settings and (when this process
    runs jobs) a JobRunner whose work is ``work``."""

    def __init__(
        self, storage: Storage, store: JobStore, settings: MakeSettings, run: RunSettings | None = None
    ) -> None:
        self.storage = storage
        self.store = store
        self.settings = settings
        self.runner = (
            None
            if run is None
            else JobRunner(store, self.work, max_jobs=run.max_jobs, poll_interval=run.poll_interval)
        )
        self._hooks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        await self.store.start()
        if self.runner is not None:
            await self.runner.start()

    async def close(self) -> None:
        if self.runner is not None:
            await self.runner.stop()  # releases its claims: others take them at once
        if self._hooks:
            await asyncio.wait(self._hooks)
        await self.store.close()

    # -- hooks: what uploads and deletes do; they never fail the request.

    async def after_upload(self, info: ObjectInfo) -> None:
        await self._hook(self.source_written(info), info.key)

    async def after_delete(self, key: str) -> None:
        await self._hook(self.source_deleted(key), key)

    async def _hook(self, work: Coroutine[Any, Any, None], key: str) -> None:
        # A task of its own, so that a request cancelled now (its client gone) does not
        # cut the enqueue short; an error is logged, and GET /videos/ heals later.
        task = asyncio.create_task(_logged(work, key))
        self._hooks.add(task)
        task.add_done_callback(self._hooks.discard)
        await asyncio.shield(task)

    async def source_written(self, info: ObjectInfo) -> None:
        """Queue a job for a new version of an object that is media; an object that is
        not any more loses its job and derived files."""
        try:
            head = await self._head(info)
        except ObjectNotFound:
            return  # replaced or deleted meanwhile: that change's hook decides
        if sniff_container(head) is not None:
            await self.enqueue(info.key, info.etag)
        elif await self._has_job(info.key) and await self._still(info.key, info.etag):
            await self.forget(info.key)

    async def source_deleted(self, key: str) -> None:
        if await self._has_job(key) and await self._still(key, None):
            await self.forget(key)

    async def _has_job(self, key: str) -> bool:
        # One read for the many objects that are no video; derived files exist only
        # while their job does (forget removes them first).
        try:
            await self.store.get(key)
        except JobNotFound:
            return False
        return True

    async def _still(self, key: str, etag: str | None) -> bool:
        """Whether ``key`` is still version ``etag`` (None: still absent). If not, a
        newer upload's hook decides: its job must not be removed by an older change's."""
        try:
            return (await self.storage.stat(key)).etag == etag
        except ObjectNotFound:
            return etag is None

    # -- what /videos/ does.

    async def look(self, key: str) -> Job:
        """The job of ``key``, put right first if the source changed without it
        knowing (JobNotFound if there is none, or no more)."""
        job = await self.store.get(key)
        try:
            info = await self.storage.stat(key)
        except ObjectNotFound:
            await self.forget(key)
            raise JobNotFound(key) from None
        if info.etag == job.source_etag:
            return job
        healed = await self._heal(info)
        if healed is None:
            raise JobNotFound(key)
        return healed

    async def requeue(self, key: str) -> Job:
        """(Re)queue the object's job, media or not (ObjectNotFound if none): a file
        that is no video then fails "not a video", which is how a user asks."""
        info = await self.storage.stat(key)
        return await self.enqueue(key, info.etag)

    async def enqueue(self, key: str, etag: str) -> Job:
        job = await self.store.enqueue(key, etag)
        if self.runner is not None:
            self.runner.wake()
        return job

    async def forget(self, key: str) -> None:
        """Remove the derived files of ``key``, then its job (if any): a crash between
        the two leaves a job, which the next look removes again, never files without
        one. An attempt still running loses its claim and removes what it stored since."""
        await self.delete_derived(key)
        await self.store.remove(key)

    async def delete_derived(self, key: str, attempt: str | None = None) -> None:
        """Remove the derived files of ``key`` (of one attempt, if given)."""
        prefix = derived_prefix(key) if attempt is None else attempt_prefix(key, attempt)
        with contextlib.suppress(InvalidKey):  # too long a key: none can exist
            await self.storage.delete_prefix(prefix)

    async def _heal(self, info: ObjectInfo) -> Job | None:
        """A job whose source is now ``info``: re-queued if that is media, else
        removed (None). Unless a job for that version is queued already."""
        with contextlib.suppress(JobNotFound):
            job = await self.store.get(info.key)
            if job.source_etag == info.etag:
                return job
        try:
            head = await self._head(info)
        except ObjectNotFound:
            # Changed again meanwhile: that change's hook (or the next look) decides.
            with contextlib.suppress(JobNotFound):
                return await self.store.get(info.key)
            return None
        if sniff_container(head) is not None:
            return await self.enqueue(info.key, info.etag)
        await self.forget(info.key)
        return None

    async def _head(self, info: ObjectInfo) -> bytes:
        if info.size == 0:
            return b""  # a range of nothing is an error on S3
        end = min(info.size, SNIFF_BYTES) - 1
        return b"".join([c async for c in self.storage.read(info.key, 0, end, etag=info.etag)])

    # -- the work of one claimed job.

    async def work(self, claim: Claim) -> None:
        """Make the info, poster and HLS of the claimed job's source, and end the
        claim: done, or failed with a reason a user may read."""
        job = claim.job
        key = job.key
        if claim.previous_attempt is not None:
            await self.delete_derived(key, claim.previous_attempt)  # a dead process's leftovers
        try:
            info = await self.storage.stat(key)
        except ObjectNotFound:
            info = None
        if info is None or info.etag != job.source_etag:
            await self._source_moved(job, info)
            with contextlib.suppress(ClaimLost):  # it is, unless the store disagrees
                await claim.failed("the source changed")
            return
        attempt = job.attempt or "0"
        try:
            await self._make(claim, info, attempt)
        except ClaimLost:
            await self.delete_derived(key, attempt)
        except BaseException:
            # Cancelled (stopping, or the claim was lost), or failing: no half-made
            # attempt stays behind.
            await _bounded(self.delete_derived(key, attempt))
            raise

    async def _source_moved(self, job: Job, info: ObjectInfo | None) -> None:
        # This generation can never be made: the source is gone, or another version
        # is there (whose job is queued, or is healed now if its hook was lost).
        if info is None:
            await self.forget(job.key)
        else:
            await self._heal(info)

    async def _make(self, claim: Claim, info: ObjectInfo, attempt: str) -> None:
        key = info.key
        found: dict[str, Any] | None = None
        sink = StorageSink(self.storage, attempt_prefix(key, attempt), lambda: _check_claim(claim))
        try:
            check_room(key, attempt)
            async with self._source(info) as source:
                found = await probe(self.settings, source)
                await claim.report(0.0, {"info": found})
                made = await make(self.settings, source, found, sink, _Progress(claim).report)
        except VideoFailed as exc:  # NotAVideo too
            await self.delete_derived(key, attempt)
            await self._end(key, attempt, functools.partial(claim.failed, str(exc), {"info": found}))
            return
        except ObjectNotFound:
            # The source was replaced or deleted while it was read.
            await self.delete_derived(key, attempt)
            reason = "the source changed while it was read"
            await self._end(key, attempt, functools.partial(claim.failed, reason, {"info": found}))
            return
        base = attempt_prefix(key, attempt)
        result = {
            "info": found,
            "hls": base + made.hls,
            "poster": base + made.poster,
            "thumbnail": base + made.thumbnail,
            "renditions": list(made.renditions),
            "copied": made.copied,
        }
        await self._end(key, attempt, functools.partial(claim.done, result))

    async def _end(self, key: str, attempt: str, end: Callable[[], Awaitable[Job]]) -> None:
        """End the claim with ``end``, then remove every other attempt's files (older
        generations', strays). Those are listed before the end: once it succeeds, no
        newer generation was queued before it, so none of them is a newer one's."""
        try:
            others = await self._other_attempts(key, attempt)
        except StorageError as exc:
            log.warning("older video files of %r not listed: %s", key, exc)
            others = set()
        await end()  # ClaimLost: superseded, and our own files are removed by work()
        for other in sorted(others):
            try:
                await self.delete_derived(key, other)
            except StorageError as exc:  # the job is ended: a next make or forget retries
                log.warning("older video files of %r not removed: %s", key, exc)

    async def _other_attempts(self, key: str, attempt: str) -> set[str]:
        prefix = derived_prefix(key)
        others: set[str] = set()
        cursor: str | None = None
        try:
            while True:
                page = await self.storage.list(prefix, cursor=cursor)
                others.update(a for o in page.objects if (a := attempt_of(o.key, key)) not in (None, attempt))
                cursor = page.next_cursor
                if cursor is None:
                    return others
        except InvalidKey:
            return others  # too long a key: none can exist

    @contextlib.asynccontextmanager
    async def _source(self, info: ObjectInfo) -> AsyncIterator[Source]:
        """How ffmpeg reads exactly version ``info`` of the source, without a copy:
        the file itself (a descriptor the child inherits), or a presigned URL with
        If-Match (S3)."""
        storage = self.storage
        if isinstance(storage, FileBacked):
            fh = await storage.open_file(info.key, etag=info.etag)
            try:
                fd = fh.fileno()
                yield Source(f"/dev/fd/{fd}", pass_fds=(fd,))
            finally:
                await asyncio.to_thread(fh.close)
        elif isinstance(storage, Presigned):
            expires = int(self.settings.time_limit) + URL_MARGIN
            url = await storage.presigned_read(info.key, expires=expires)
            yield Source(url, headers=(("If-Match", info.etag),))
        else:
            raise StorageError("this backend cannot hand its objects to ffmpeg")


class _Progress:
    """A job's progress, reported at most once per REPORT_INTERVAL (and at 100)."""

    def __init__(self, claim: Claim) -> None:
        self.claim = claim
        self.last = 0.0

    async def report(self, percent: float) -> None:
        now = time.monotonic()
        if percent < 100 and now - self.last < REPORT_INTERVAL:
            _check_claim(self.claim)
            return
        self.last = now
        await self.claim.report(max(0.0, min(100.0, percent)))


def _check_claim(claim: Claim) -> None:
    if claim.lost():
        raise ClaimLost(claim.job.key)


async def _logged(work: Coroutine[Any, Any, None], key: str) -> None:
    try:
        await work
    except Exception:
        log.exception("video job of %r not updated (GET /videos/ will put it right)", key)


async def _bounded(cleanup: Coroutine[Any, Any, None]) -> None:
    """Run ``cleanup`` while cancelled, for at most CLEANUP_WAIT seconds; its failure
    is logged (the next attempt's done removes what stays)."""
    try:
        async with asyncio.timeout(CLEANUP_WAIT):
            await cleanup
    except (TimeoutError, StorageError, OSError) as exc:
        log.warning("stray video files may remain: %s", exc)
