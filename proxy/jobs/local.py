"""The job queue in the local directory (layout.JOBS), shared by every process on
the host that uses the same root.

Every read-modify-write of a record happens under ``jobs/lock``, flocked for a
moment, and every record is written whole (a temporary file, fsynced, renamed over
it), so a reader never sees half a record and a crash leaves the old one or the new.
A queue entry is made before a record turns queued and removed after it turns done,
failed or gone, so a crash between the two leaves at most an entry too many, which
the next claim scan removes.

A claim flocks ``run/<h>`` for its whole life. The kernel lets go of it when the
process dies, however it dies, so a job whose holder is gone is claimable at once:
a running record whose run lock can be taken belongs to nobody. The run file is made
and removed only under ``jobs/lock``, so no one ever locks a file already unlinked.
The holder re-reads its record every lease/3 to learn that it was re-queued or
removed (lost()), and finds out at its next write in any case.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from proxy.jobs import records
from proxy.jobs.base import QUEUED, ClaimLost, Job, JobNotFound
from proxy.jobs.claims import HeldClaim
from proxy.jobs.records import Record
from proxy.storage import layout
from proxy.storage.local.files import fsync_dir, write_synced


class _Files:
    """The job files under one root; every method blocks (run them in a thread)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.lock_path = root / layout.JOB_LOCK
        self.queue_dir = root / layout.JOB_QUEUE
        self.run_dir = root / layout.JOB_RUN

    def make_dirs(self) -> None:
        for directory in (self.root / layout.JOB_RECORDS, self.queue_dir, self.run_dir):
            directory.mkdir(parents=True, exist_ok=True)

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing lets go of the flock

    def record_path(self, key: str) -> Path:
        return self.root / layout.job_record_key(key)

    def read(self, key: str) -> Record | None:
        return self.read_path(self.record_path(key))

    @staticmethod
    def read_path(path: Path) -> Record | None:
        try:
            return Record.from_json(path.read_bytes())
        except FileNotFoundError:
            return None

    def write(self, record: Record) -> None:
        path = self.record_path(record.job.key)
        path.parent.mkdir(parents=True, exist_ok=True)
        temp = path.with_name(f"{path.name}.{uuid.uuid4().hex}.tmp")
        try:
            write_synced(temp, record.to_json())
            os.replace(temp, path)
        finally:
            temp.unlink(missing_ok=True)
        fsync_dir(path.parent)

    def delete(self, key: str) -> None:
        self.record_path(key).unlink(missing_ok=True)

    def add_entry(self, key: str) -> None:
        entry = self.queue_dir / layout.job_digest(key)
        entry.unlink(missing_ok=True)  # a new mtime: the end of the queue
        write_synced(entry, b"")
        fsync_dir(self.queue_dir)

    def drop_entry(self, key: str) -> None:
        (self.queue_dir / layout.job_digest(key)).unlink(missing_ok=True)

    def entries(self) -> list[str]:
        """The digests of queued and running jobs, the longest queued first."""
        found = []
        with os.scandir(self.queue_dir) as scan:
            for entry in scan:
                with contextlib.suppress(FileNotFoundError):
                    found.append((entry.stat().st_mtime_ns, entry.name))
        return [name for _, name in sorted(found)]

    def record_of(self, digest: str) -> Record | None:
        return self.read_path(self.root / layout.job_record_key_of(digest))

    def try_run_lock(self, digest: str) -> int | None:
        """The run lock of a job, flocked, or None if a live process holds it."""
        fd = os.open(self.run_dir / digest, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        except BaseException:
            os.close(fd)
            raise
        return fd


class LocalClaim(HeldClaim):
    def __init__(self, files: _Files, record: Record, previous: str | None, lease: float, fd: int) -> None:
        super().__init__(record, previous, lease)
        self._files = files
        self._fd = fd

    def _check_ours(self) -> None:
        if not records.same_claim(self._files.read(self.job.key), self.record):
            raise ClaimLost(f"job {self.job.key!r} was re-queued or removed")

    def _sync_write(self, record: Record, end: bool) -> None:
        with self._files.locked():
            self._check_ours()
            self._files.write(record)
            if end:
                self._files.drop_entry(record.job.key)
            if end or record.job.state == QUEUED:
                # Unlinked while we hold it, under jobs/lock: the next claim makes a new one.
                (self._files.root / layout.job_run_key(record.job.key)).unlink(missing_ok=True)

    async def _write(self, record: Record) -> None:
        await asyncio.to_thread(self._sync_write, record, False)

    async def _end(self, record: Record) -> None:
        await asyncio.to_thread(self._sync_write, record, True)

    async def _give_back(self, record: Record) -> None:
        with contextlib.suppress(ClaimLost):
            await asyncio.to_thread(self._sync_write, record, False)

    async def _renew(self) -> None:
        await asyncio.to_thread(self._check_ours)

    def _let_go(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class LocalJobStore:
    def __init__(self, root: Path, lease: float = 30.0) -> None:
        self._files = _Files(root)
        self._lease = lease
        self._held: set[LocalClaim] = set()

    async def start(self) -> None:
        await asyncio.to_thread(self._files.make_dirs)

    async def close(self) -> None:
        for claim in list(self._held):
            await claim.abandon()
        self._held.clear()

    async def enqueue(self, key: str, source_etag: str) -> Job:
        return await asyncio.to_thread(self._sync_enqueue, key, source_etag)

    def _sync_enqueue(self, key: str, source_etag: str) -> Job:
        with self._files.locked():
            record = records.enqueued(self._files.read(key), key, source_etag, time.time())
            self._files.add_entry(key)
            self._files.write(record)
            return record.job

    async def get(self, key: str) -> Job:
        record = await asyncio.to_thread(self._files.read, key)
        if record is None:
            raise JobNotFound(key)
        return record.job

    async def remove(self, key: str) -> Job | None:
        return await asyncio.to_thread(self._sync_remove, key)

    def _sync_remove(self, key: str) -> Job | None:
        with self._files.locked():
            record = self._files.read(key)
            self._files.delete(key)
            self._files.drop_entry(key)
            return None if record is None else record.job

    async def claim(self) -> LocalClaim | None:
        self._held = {c for c in self._held if not c.over}
        found = await asyncio.to_thread(self._sync_claim)
        if found is None:
            return None
        claim = LocalClaim(self._files, *found)
        claim.start_renewing()
        self._held.add(claim)
        return claim

    def _sync_claim(self) -> tuple[Record, str | None, float, int] | None:
        with self._files.locked():
            for digest in self._files.entries():
                record = self._files.record_of(digest)
                if record is None or not record.active:
                    (self._files.queue_dir / digest).unlink(missing_ok=True)  # left by a crash
                    continue
                fd = self._files.try_run_lock(digest)
                if fd is None:
                    continue  # a live process runs it (or still runs an older generation)
                try:
                    new, previous = records.claimed(record, time.time(), {"holder": os.getpid()})
                    self._files.write(new)
                except BaseException:
                    os.close(fd)
                    raise
                return new, previous, self._lease, fd
        return None
