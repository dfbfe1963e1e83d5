"""One writer at a time per resumable upload, across every process sharing the
bucket: a lease written into the upload's state object (records.py).

What is guaranteed
------------------
``lock(id)`` reads the state. If it carries a lease that has not run out, the upload
is locked (UploadLocked, at once); otherwise the process writes the state with a
lease of its own, conditionally on the version it read, and a conflict means another
process took it first (UploadLocked). A lease runs out ``lease + 1`` seconds after
the state's Last-Modified, both read from the S3 server's clock (Last-Modified and
Date), so the proxies' clocks never matter; the extra second covers S3's one-second
resolution. The holder rewrites the state every ``lease / 3`` seconds to renew it
and writes it without the lease when done. Within one process a second lock on the
same upload fails without asking S3.

A PATCH that leaves the upload incomplete has nothing left to do once it has saved
the state, so that save writes it without the lease already (``save(release=True)``):
one write to S3 fewer per PATCH. Should the holder go on writing under the same
lock after all, ``hold()`` writes the lease again over the version it saved, which
fails (UploadLocked) if another process has taken the upload since.

A process also remembers the state it last wrote without a lease (Leases): the next
lock on that upload, most often the same client's next PATCH on the same connection,
writes its lease over that version without reading the state first. If anyone has
written it since, the condition fails and the lock reads the state as above.

If a holder stalls past its lease (a hung process, a network partition, renewals
that keep failing), another process may take the upload over. The stalled holder
counts its own lease from the moment it sent its last successful write, before S3
dated that write, so it stops (UploadLocked) no later than anyone may take over,
as long as the clocks tick at the same rate. Every write it still attempts to the
state fails its If-Match, so it never saves over the new holder's state. What it can
still do is finish an UploadPart already in flight, on a part number the new holder
also writes. That cannot corrupt the object silently: Complete names every part's
ETag from the state, S3 refuses it (InvalidPart) if a part holds other bytes, and
the upload then fails instead of publishing the wrong bytes.

A holder that dies (or is cancelled while its lease is being written) leaves its
lease, which blocks the upload for at most ``lease + 1`` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator
from dataclasses import replace
from email.utils import parsedate_to_datetime
from typing import Any

from proxy.storage.base import StorageError
from proxy.storage.resumable import UploadLocked, UploadState
from proxy.storage.s3.resumable.records import StateChanged, UploadRecords
from proxy.streaming.cleanups import Cleanups

log = logging.getLogger(__name__)
# Uploads whose last state a process remembers (Leases): a client's next PATCH is
# seconds away at most; a state with many parts holds a few hundred KiB.
REMEMBERED_STATES = 256


def lease_lapsed(response: dict[str, Any], seconds: float) -> bool:
    """Whether a lease of ``seconds`` written by the object a GetObject (or HeadObject)
    ``response`` describes has run out, by the S3 server's clock (its Date and the
    object's Last-Modified); the extra second covers Last-Modified's resolution.
    Shared with the job claims (proxy.jobs.s3), which lease the same way."""
    date = response["ResponseMetadata"]["HTTPHeaders"].get("date")
    now = parsedate_to_datetime(date).timestamp() if date else time.time()
    return bool(now >= response["LastModified"].timestamp() + seconds + 1)


class Lease:
    """This process's lock on one upload, and the only way to write its state."""

    def __init__(self, records: UploadRecords, upload_id: str, seconds: float) -> None:
        self.upload_id = upload_id
        self._records = records
        self._seconds = seconds
        self._holder = uuid.uuid4().hex
        self.state: UploadState | None = None  # as last read or written; None once removed
        self._deadline = 0.0  # event loop time at which our lease may have run out
        self._lost = False
        self._released = False  # the state was saved without the lease (save(release=True))
        # Serialises writes of the state (saves and renewals): each needs the last ETag.
        self._mutex = asyncio.Lock()
        self._renewer: asyncio.Task[None] | None = None

    def check(self) -> None:
        """Stop if another process may have taken the upload over."""
        if self._released:
            return  # nothing is written under it until hold() has taken it again
        if not self._lost and asyncio.get_running_loop().time() >= self._deadline:
            self._lost = True
        if self._lost:
            raise UploadLocked(f"upload {self.upload_id}: this request's lock ran out")

    @property
    def released(self) -> UploadState | None:
        """The state as this lease last wrote it without itself, if that is the last
        write: what the next lock may write its lease over without reading it."""
        return self.state if self._released and not self._lost else None

    async def acquire(self, saved: UploadState | None = None) -> UploadState:
        """Take the lease: over ``saved`` (Leases.released) if nobody wrote the state
        since, else over the state as read, unless another lease holds it."""
        if saved is not None and (written := await self._take_over(saved)) is not None:
            return written
        state, response = await self._records.read_state(self.upload_id)
        lease = state.backend.get("lease")
        # Our own lease is there if a write of it failed but reached S3 all the same.
        if (
            lease is not None
            and lease.get("holder") != self._holder
            and not lease_lapsed(response, float(lease["seconds"]))
        ):
            raise UploadLocked(f"upload {self.upload_id} is being written to")
        self.state = state
        async with self._mutex:
            written = await self._write(state)
        self._renewer = asyncio.create_task(self._renew_forever())
        return written

    async def _take_over(self, saved: UploadState) -> UploadState | None:
        self.state = saved
        async with self._mutex:
            try:
                written = await self._write(saved)
            except (UploadLocked, StorageError):
                # Written by someone since (or the write failed): read it instead.
                self.state, self._lost = None, False
                return None
        self._renewer = asyncio.create_task(self._renew_forever())
        return written

    async def save(self, state: UploadState, *, release: bool = False) -> UploadState:
        """Write ``state`` over the version held: with this lease, or without it when
        ``release`` (nothing more is to be written: the release is this write)."""
        async with self._mutex:
            return await self._write(state, release=release)

    async def hold(self) -> None:
        """Take the lease again if a save released it; UploadLocked if another process
        has written the state since."""
        async with self._mutex:
            if self._released:
                assert self.state is not None
                await self._write(self.state)

    async def remove(self) -> None:
        """Delete the state object: the upload is gone, and this lease with it."""
        async with self._mutex:
            await self._records.delete_state(self.upload_id)
            self.state = None

    async def _write(self, state: UploadState, *, release: bool = False) -> UploadState:
        """Write ``state`` with our lease (without it: ``release``) over the version we
        hold; the caller holds the mutex. UploadLocked if another process has written
        it meanwhile."""
        assert self.state is not None and self.state.version is not None
        if self._lost:
            raise UploadLocked(f"upload {self.upload_id}: this request's lock ran out")
        backend = {k: v for k, v in state.backend.items() if k != "lease"}
        if not release:
            backend["lease"] = {"holder": self._holder, "seconds": self._seconds, "write": uuid.uuid4().hex}
        state = replace(state, backend=backend)
        sent = asyncio.get_running_loop().time()
        try:
            version = await self._records.put_state(state, if_match=self.state.version)
        except StateChanged:
            self._lost = True
            raise UploadLocked(f"upload {self.upload_id} was taken over by another request") from None
        self.state = replace(state, version=version)
        self._released = release
        if not release:
            self._deadline = sent + self._seconds
        return self.state

    async def _renew_forever(self) -> None:
        while True:
            await asyncio.sleep(self._seconds / 3)
            async with self._mutex:
                if self.state is None or self._lost:
                    return
                if self._released:
                    continue  # nothing to renew until hold()
                try:
                    await self._write(self.state)
                except UploadLocked:
                    log.warning("lost the lock on upload %s", self.upload_id)
                    return
                except StorageError as exc:
                    # Try again: the lease lasts three renewals, and check() stops
                    # the writer once it has run out.
                    log.warning("could not renew the lock on upload %s: %s", self.upload_id, exc)

    async def release(self) -> None:
        async with self._mutex:
            # Stopped while it sleeps or waits for the mutex, never in the middle of a
            # write whose new ETag we would then not know.
            if self._renewer is not None:
                self._renewer.cancel()
                await asyncio.wait([self._renewer])
            if self.state is None or self._lost or self._released or self.state.version is None:
                return
            try:
                await self._write(self.state, release=True)
            except UploadLocked:
                log.warning("upload %s was taken over before its lock was released", self.upload_id)
            except StorageError as exc:
                log.warning(
                    "could not release the lock on upload %s (it runs out in %s s): %s",
                    self.upload_id,
                    self._seconds,
                    exc,
                )


class Leases:
    """The uploads this process holds."""

    def __init__(self, records: UploadRecords, seconds: float, cleanups: Cleanups) -> None:
        self._records = records
        self._seconds = seconds
        self._cleanups = cleanups
        self._held: dict[str, Lease] = {}
        # The state this process last wrote without a lease, per upload (Lease.released).
        self._released: OrderedDict[str, UploadState] = OrderedDict()

    def lock(self, upload_id: str) -> contextlib.AbstractAsyncContextManager[UploadState]:
        return self._locked(upload_id)

    @contextlib.asynccontextmanager
    async def _locked(self, upload_id: str) -> AsyncIterator[UploadState]:
        if upload_id in self._held:
            raise UploadLocked(f"upload {upload_id} is being written to")
        lease = self._held[upload_id] = Lease(self._records, upload_id, self._seconds)
        try:
            state = await lease.acquire(self._released.pop(upload_id, None))
            try:
                yield state
            finally:
                await self._cleanups.run(lease.release())
                self._remember(lease)
        finally:
            del self._held[upload_id]

    def _remember(self, lease: Lease) -> None:
        released = lease.released
        if released is not None and not released.done:
            self._released[lease.upload_id] = released
            if len(self._released) > REMEMBERED_STATES:
                self._released.popitem(last=False)

    def holding(self, state: UploadState) -> Lease:
        """The lease on ``state``'s upload, which the caller must hold and still own."""
        lease = self._held.get(state.id)
        if lease is None or lease.state is None:
            raise RuntimeError(f"upload {state.id} is not locked by this process")
        lease.check()
        return lease
