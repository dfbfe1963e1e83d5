"""Resumable uploads kept by the local directory backend, beside its objects.

Each upload is a directory (storage.layout's ``uploads/<id>/``) holding
``state.json`` (the UploadState, replaced atomically and synced), ``data`` (the
bytes so far) and ``lock``. An upload is built in the backend's ``tmp/`` and renamed
into ``uploads/``, and terminating renames it back out before removing it, so no
process ever sees half an upload. Finishing renames ``data`` to the object's key
and keeps the (done) state until the upload is terminated or expires, so that a
client asking for the offset learns that it is complete.

Bytes in ``data`` past the saved offset were left by a writer that died before
saving its state: they are never counted, the next chunk overwrites them and
finishing cuts them off.

What the lock guarantees: ``lock(id)`` opens ``lock`` anew and takes
``flock(LOCK_EX | LOCK_NB)`` on it, refusing at once (UploadLocked) if that is
held. A flock belongs to the open file, not to the process, so two requests in one
process exclude each other exactly as two processes do. The kernel drops it when
the file is closed, however its holder ends, so a crash never leaves a stale lock.
Work that must outlive a cancelled request (keeping a cut-off chunk, saving state)
keeps the lock until it has ended. This holds between all processes sharing the
directory on one host's local file system, containers on that host included. It is
not guaranteed on network file systems: on NFS, flock is local to each client with
some mount options and otherwise rests on leases that a cut-off client can lose
while it is still writing, so processes on two hosts might both write one upload.
Nothing excludes a program that writes the files without taking the lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import shutil
from collections.abc import AsyncIterator, Awaitable
from dataclasses import replace
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

from proxy.storage.base import ObjectInfo, ObjectNotFound
from proxy.storage.layout import UPLOAD_DATA, UPLOAD_LOCK, UPLOAD_STATE
from proxy.storage.local.concat import assemble, remove_quietly
from proxy.storage.local.files import BlockWriter, fsync_dir, write_synced
from proxy.storage.local.objects import LocalStorage
from proxy.storage.resumable import (
    UPLOAD_ID,
    UploadBody,
    UploadLocked,
    UploadNotFound,
    UploadState,
    check_sealed,
)
from proxy.streaming.cleanups import Cleanups
from proxy.streaming.sha256_state import ResumableSha256

T = TypeVar("T")
log = logging.getLogger(__name__)


class LocalResumableStore:
    def __init__(self, storage: LocalStorage) -> None:
        self._storage = storage
        self._paths = storage.paths
        self._uploads = storage.paths.uploads
        self._cleanups = Cleanups()
        # Work on a held upload that a cancelled caller left running: the lock is
        # released only when it ends.
        self._unfinished: dict[str, asyncio.Task[Any]] = {}

    async def start(self) -> None:
        await asyncio.to_thread(self._uploads.mkdir, parents=True, exist_ok=True)

    async def close(self) -> None:
        await self._cleanups.drain()

    def _dir(self, upload_id: str) -> Path:
        return self._paths.upload(upload_id)

    # -- state ---------------------------------------------------------------

    async def create(self, state: UploadState) -> UploadState:
        return await asyncio.to_thread(self._create, state)

    def _create(self, state: UploadState) -> UploadState:
        target = self._dir(state.id)
        build = self._paths.temp(".upload")
        build.mkdir()
        try:
            for name in (UPLOAD_DATA, UPLOAD_LOCK):
                (build / name).touch(exist_ok=False)
            # Finishing renames the data file onto the key: its inode tells, after a
            # crash, whether the object there is this upload.
            state = replace(state, backend={**state.backend, "data_ino": os.stat(build / UPLOAD_DATA).st_ino})
            _write_state(build, state)
            os.rename(build, target)
        except BaseException:
            shutil.rmtree(build, ignore_errors=True)
            raise
        fsync_dir(self._uploads)
        return state

    async def get(self, upload_id: str) -> UploadState:
        return await asyncio.to_thread(self._read_state, upload_id)

    def _read_state(self, upload_id: str) -> UploadState:
        try:
            return UploadState.from_json((self._dir(upload_id) / UPLOAD_STATE).read_bytes())
        except FileNotFoundError:
            raise UploadNotFound(upload_id) from None

    async def save(self, state: UploadState) -> UploadState:
        return await self._to_the_end(state.id, asyncio.to_thread(self._save, state))

    def _save(self, state: UploadState) -> UploadState:
        _write_state(self._dir(state.id), state)
        return state

    async def upload_ids(self) -> list[str]:
        return await asyncio.to_thread(self._upload_ids)

    def _upload_ids(self) -> list[str]:
        with os.scandir(self._uploads) as entries:
            return [entry.name for entry in entries if UPLOAD_ID.fullmatch(entry.name)]

    # -- lock ----------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def lock(self, upload_id: str) -> AsyncIterator[UploadState]:
        fd = await _acquire(self._dir(upload_id) / UPLOAD_LOCK, upload_id)
        try:
            # Read under the lock: the state may have changed since any earlier look.
            yield await self.get(upload_id)
        finally:
            self._release(upload_id, fd)

    def _release(self, upload_id: str, fd: int) -> None:
        unfinished = self._unfinished.get(upload_id)
        if unfinished is None:
            os.close(fd)  # inline: a thread hop could be cancelled before it ran, keeping the lock
        else:
            unfinished.add_done_callback(lambda _: os.close(fd))

    async def _to_the_end(self, upload_id: str | list[str], work: Awaitable[T]) -> T:
        """Run ``work`` on held uploads to its end even if the caller is cancelled
        meanwhile; their locks stay held until then, and close() waits for it."""
        task = asyncio.ensure_future(work)
        held = [upload_id] if isinstance(upload_id, str) else upload_id
        for one in held:
            self._unfinished[one] = task

        def forget(_: asyncio.Future[T]) -> None:
            for one in held:
                self._unfinished.pop(one, None)

        task.add_done_callback(forget)
        return await self._cleanups.run(task)

    # -- bytes ---------------------------------------------------------------

    async def append(self, state: UploadState, body: UploadBody) -> UploadState:
        fh = await asyncio.to_thread(self._open_data, state)
        writer = BlockWriter(fh)
        try:
            async for chunk in body:
                await writer.write(chunk)
            await writer.flush()
        except BaseException:
            await self._to_the_end(state.id, self._interrupted(fh, writer, state, body))
            raise
        return await self._to_the_end(state.id, asyncio.to_thread(self._conclude, fh, body.advanced(state)))

    def _open_data(self, state: UploadState) -> BinaryIO:
        fh = open(self._dir(state.id) / UPLOAD_DATA, "r+b")  # noqa: SIM115 - append closes it
        # At the offset, not the end: a writer that died may have left bytes past it.
        fh.seek(state.offset)
        return fh

    async def _interrupted(
        self, fh: BinaryIO, writer: BlockWriter, state: UploadState, body: UploadBody
    ) -> None:
        """The body stopped early or storing it failed: save the bytes taken if the
        body allows it, else cut them off and leave the state as it was."""
        try:
            if body.keeps_partial:
                await writer.flush()
                await asyncio.to_thread(self._conclude, fh, body.advanced(state))
            else:
                with contextlib.suppress(BaseException):
                    await writer.settle()
                # Past the saved offset they would only be overwritten, but need not take space till then.
                await asyncio.to_thread(fh.truncate, state.offset)
        except Exception as exc:
            # The caller raises what stopped the body; this is what it cost on top.
            log.warning(
                "upload %s: the %d bytes of a cut-off chunk were not settled: %s", state.id, body.taken, exc
            )
        finally:
            with contextlib.suppress(OSError):  # a failed flush, already reported above
                await asyncio.to_thread(fh.close)

    def _conclude(self, fh: BinaryIO, advanced: UploadState) -> UploadState:
        """``fh`` holds the bytes up to ``advanced.offset``: make them durable, then count them."""
        with fh:
            fh.flush()
            fh.truncate(advanced.offset)  # what a writer that died left past the new end
            os.fdatasync(fh.fileno())
        return self._save(advanced)

    async def finish(self, state: UploadState) -> ObjectInfo:
        return await self._to_the_end(state.id, asyncio.to_thread(self._finish, state))

    def _finish(self, state: UploadState) -> ObjectInfo:
        data = self._dir(state.id) / UPLOAD_DATA
        meta = {"content_type": state.content_type, "sha256": ResumableSha256(state.sha256).hexdigest()}
        info = None
        if not data.exists():
            # A process died after the rename and before saving done: finish its work,
            # if the key still holds the upload's file (checked under the key's lock).
            info = self._described(state, meta)
        if info is None:
            with open(data, "r+b") as fh:
                fh.truncate(state.offset)  # bytes a writer that died left past the end are not the upload's
                os.fsync(fh.fileno())
            # Renamed and described under the key's lock, as every write is (local.keylocks).
            info = self._storage.publish_file(state.key, data, meta)
        self._save(replace(state, done=True))
        return info

    def _described(self, state: UploadState, meta: dict[str, Any]) -> ObjectInfo | None:
        ino = state.backend.get("data_ino")
        if not isinstance(ino, int):
            return None
        try:
            return self._storage.describe_file(state.key, meta, ino=ino)
        except ObjectNotFound:
            return None

    async def seal(self, state: UploadState) -> UploadState:
        return await self._to_the_end(state.id, asyncio.to_thread(self._seal, state))

    def _seal(self, state: UploadState) -> UploadState:
        with open(self._dir(state.id) / UPLOAD_DATA, "r+b") as fh:
            fh.truncate(state.offset)  # as finishing does: past the offset is not the upload's
            os.fsync(fh.fileno())
        return self._save(replace(state, done=True))

    async def concatenate(self, final: UploadState, partials: list[UploadState]) -> ObjectInfo:
        check_sealed(partials)
        return await self._to_the_end([p.id for p in partials], self._concatenate(final, partials))

    async def _concatenate(self, final: UploadState, partials: list[UploadState]) -> ObjectInfo:
        sources = [(self._dir(p.id) / UPLOAD_DATA, p.offset) for p in partials]
        assembled = self._paths.temp(".concat")
        try:
            sha256 = await assemble(sources, assembled, partials[0].sha256)
            meta = {"content_type": final.content_type, "sha256": ResumableSha256(sha256).hexdigest()}
            info = await asyncio.to_thread(self._storage.publish_file, final.key, assembled, meta)
        except BaseException:
            await asyncio.to_thread(remove_quietly, assembled)
            raise
        # Only now does the final exist, complete: a crash before leaves an object a
        # retried final publishes again, and partials that expire.
        await asyncio.to_thread(self._create, replace(final, sha256=sha256, done=True))
        for partial in partials:
            try:
                await asyncio.to_thread(self._terminate, partial.id)
            except OSError as exc:
                log.warning("upload %s: a partial used by a final was not removed: %s", partial.id, exc)
        return info

    async def terminate(self, state: UploadState) -> None:
        await self._to_the_end(state.id, asyncio.to_thread(self._terminate, state.id))

    def _terminate(self, upload_id: str) -> None:
        # Out of uploads/ in one rename; if the process dies before the removal,
        # LocalStorage.start() clears the stale temporary directory.
        doomed = self._paths.temp(".removed")
        os.rename(self._dir(upload_id), doomed)
        fsync_dir(self._uploads)
        shutil.rmtree(doomed)


def _write_state(directory: Path, state: UploadState) -> None:
    staged = directory / (UPLOAD_STATE + ".new")
    write_synced(staged, state.to_json())
    os.replace(staged, directory / UPLOAD_STATE)
    fsync_dir(directory)


async def _acquire(path: Path, upload_id: str) -> int:
    taking = asyncio.ensure_future(asyncio.to_thread(_take_lock, path, upload_id))
    try:
        return await asyncio.shield(taking)
    except asyncio.CancelledError:
        # The thread goes on regardless, and a lock it took would be held until exit.
        taking.add_done_callback(_close_taken)
        raise


def _take_lock(path: Path, upload_id: str) -> int:
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        raise UploadNotFound(upload_id) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if isinstance(exc, BlockingIOError):
            raise UploadLocked(f"upload {upload_id} is being written by another request") from None
        raise
    return fd


def _close_taken(taking: asyncio.Future[int]) -> None:
    if not taking.cancelled() and taking.exception() is None:
        os.close(taking.result())
