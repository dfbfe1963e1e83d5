"""Resumable (tus) uploads in an S3 bucket: state, bytes and lock all in the bucket.

The bytes go to one S3 multipart upload, created when the first part is full and
assembled at the upload's own ``object`` key (storage.layout), then published to the
final key with its hash (s3.publish); what does not yet fill a part waits in a tail
object. The work is
split by job:

- plan.py: how the bytes are cut into parts (pure);
- records.py: the upload's objects in the bucket, the state written conditionally;
- lease.py: one writer at a time across processes, a lease in the state object;
- append.py: one PATCH body on its way into parts and a tail;
- finish.py: publishing the object, and taking up a finish that stopped; sealing a
  partial upload (tus concatenation) into its own object;
- concat.py: partial uploads assembled into a final object, copied by S3.

This store composes them into the ResumableStore interface.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import replace

from proxy.storage import layout
from proxy.storage.base import ObjectInfo, ObjectTooLarge, StorageError
from proxy.storage.resumable import UploadBody, UploadState
from proxy.storage.s3.multipart import UploadTarget
from proxy.storage.s3.objects import S3Storage
from proxy.storage.s3.resumable.append import Append
from proxy.storage.s3.resumable.concat import concatenate
from proxy.storage.s3.resumable.finish import finish_upload
from proxy.storage.s3.resumable.lease import Leases
from proxy.storage.s3.resumable.plan import PartLayout
from proxy.storage.s3.resumable.records import StateChanged, UploadRecords

log = logging.getLogger(__name__)


class S3ResumableStore:
    def __init__(self, storage: S3Storage, lock_lease: float) -> None:
        self.storage = storage  # the objects it shares a client, bucket and budget with
        self.records = UploadRecords(storage)
        self.leases = Leases(self.records, lock_lease, storage.cleanups)

    async def start(self) -> None:
        """Nothing to prepare: the S3Storage it shares is started by the application."""

    async def close(self) -> None:
        """Nothing to release: writes that must finish run in the storage's Cleanups,
        which S3Storage.close() waits for."""

    async def create(self, state: UploadState) -> UploadState:
        try:
            parts = PartLayout.for_new_upload(state.length, self.storage.cfg.part_size)
        except ValueError as exc:
            raise ObjectTooLarge(str(exc)) from None
        stored = replace(state, backend=parts.backend())
        try:
            version = await self.records.put_state(stored, if_match=None)
        except StateChanged:
            raise StorageError(f"upload {state.id} exists already") from None
        return replace(stored, version=version)

    async def get(self, upload_id: str) -> UploadState:
        state, _ = await self.records.read_state(upload_id)
        return state

    def lock(self, upload_id: str) -> contextlib.AbstractAsyncContextManager[UploadState]:
        return self.leases.lock(upload_id)

    async def save(self, state: UploadState) -> UploadState:
        return await self.leases.holding(state).save(state)

    def _target(self, state: UploadState) -> UploadTarget:
        staged = PartLayout.of(state).staged
        staging_key = layout.upload_object_key(state.id) if staged else state.key
        return self.storage.upload_target(state.key, state.content_type, staging_key=staging_key)

    async def append(self, state: UploadState, body: UploadBody) -> UploadState:
        appending = Append(
            state,
            lease=self.leases.holding(state),
            records=self.records,
            target=self._target(state),
            budget=self.storage.budget,
            max_concurrency=self.storage.cfg.max_concurrency,
        )
        cleanups = self.storage.cleanups
        try:
            await appending.take(body)
        except BaseException as exc:
            keep = body.keeps_partial and (appending.body_failed or isinstance(exc, asyncio.CancelledError))
            if not keep:
                await cleanups.run(appending.discard())
                raise
            try:
                await cleanups.run(appending.save(body))
            except StorageError as save_error:
                log.warning("upload %s: could not keep a cut-off chunk: %s", state.id, save_error)
            raise
        return await cleanups.run(appending.save(body))

    async def finish(self, state: UploadState) -> ObjectInfo:
        # Once every byte is in, publishing no longer depends on the client: it runs
        # to the end even if the request is cancelled meanwhile.
        finishing = finish_upload(
            state,
            lease=self.leases.holding(state),
            records=self.records,
            target=self._target(state),
            storage=self.storage,
        )
        return await self.storage.cleanups.run(finishing)

    async def seal(self, state: UploadState) -> UploadState:
        # Assembled at the upload's own object key, and left there for a final.
        own = layout.upload_object_key(state.id)
        lease = self.leases.holding(state)
        sealing = finish_upload(
            state,
            lease=lease,
            records=self.records,
            target=self.storage.upload_target(own, "application/octet-stream", staging_key=own),
            storage=self.storage,
            publishing=False,
        )
        await self.storage.cleanups.run(sealing)
        assert lease.state is not None
        return lease.state

    async def concatenate(self, final: UploadState, partials: list[UploadState]) -> ObjectInfo:
        assembling = concatenate(
            final, partials, storage=self.storage, records=self.records, leases=self.leases
        )
        return await self.storage.cleanups.run(assembling)

    async def terminate(self, state: UploadState) -> None:
        lease = self.leases.holding(state)
        parts = PartLayout.of(state)
        if parts.upload_id is not None:
            await self._target(state).abort(parts.upload_id)
        # The state goes last, so that a failure here leaves the upload for the next
        # sweep to find.
        await self.records.delete_all_but_state(state.id)
        await lease.remove()

    async def upload_ids(self) -> list[str]:
        return await self.records.upload_ids()
