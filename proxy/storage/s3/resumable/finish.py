"""Publishing a complete resumable upload as its object, and taking up a finish that
stopped half-way.

A finish completes the multipart upload at the upload's staging key (or, for an
upload that never filled a part, puts the tail as the object with its hash at
once), publishes it to its key with its hash (s3.publish: a copy, then the staging
object is removed) and then saves the state as done. If it stops in between (a
crash, a lost answer), the multipart upload is gone and the next finish fails on
it; that finish then recognises what the earlier one made (assembled_before,
published_etag) and takes the work up where it stopped.

A partial upload (tus concatenation) is sealed the same way but not published: its
``target`` is its own ``object`` key, which then holds its bytes, and the state
records that object's ETag (``object_etag``) for the final that copies from it.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from datetime import datetime

from proxy.storage.base import ObjectInfo, UpstreamError
from proxy.storage.resumable import UploadState
from proxy.storage.s3.multipart import UploadTarget, multipart_etag
from proxy.storage.s3.objects import S3Storage
from proxy.storage.s3.publish import publish, published_etag
from proxy.storage.s3.resumable.lease import Lease
from proxy.storage.s3.resumable.plan import PartLayout
from proxy.storage.s3.resumable.records import UploadRecords
from proxy.streaming.part_buffer import PartBuffer
from proxy.streaming.sha256_state import ResumableSha256

log = logging.getLogger(__name__)
# In a sealed partial's state: the ETag of its object, which a final copies from.
OBJECT_ETAG = "object_etag"


async def finish_upload(
    state: UploadState,
    *,
    lease: Lease,
    records: UploadRecords,
    target: UploadTarget,
    storage: S3Storage,
    publishing: bool = True,
) -> ObjectInfo:
    """Complete the upload's object and, if ``publishing``, publish it at its key."""
    parts = PartLayout.of(state)
    sha256 = ResumableSha256(state.sha256).hexdigest()
    tail = PartBuffer(storage.budget)
    unsent: PartBuffer | None = tail  # the sender closes the parts it is given
    try:
        await records.read_tail(state, parts, tail)
        if not parts.parts:
            etag = await target.put(tail, sha256)
            if parts.upload_id is not None:  # created by an append that then failed
                await target.abort(parts.upload_id)
        else:
            assert parts.upload_id is not None
            etags = {number: etag for number, etag, _ in parts.parts}
            try:
                if tail.size:
                    sender = target.part_sender(parts.upload_id, max_concurrency=storage.cfg.max_concurrency)
                    sender.start(len(parts.parts) + 1, tail)
                    unsent = None
                    await sender.wait_all()
                    etags.update(sender.etags)
                etag = await target.complete(parts.upload_id, etags)
            except UpstreamError:
                published = await published_etag(target, state.offset, sha256) if publishing else None
                if published is not None:
                    log.info("upload %s: an earlier finish published it already", state.id)
                    return await _done(state, parts, lease, records, storage, published, sha256, True)
                if not await assembled_before(storage, target, state, parts, records):
                    raise
                etag = await target.staged_etag() or ""
            if publishing:
                etag = await publish(
                    target,
                    state.offset,
                    sha256,
                    writers=storage.writers,
                    max_concurrency=storage.cfg.max_concurrency,
                )
    finally:
        if unsent is not None:
            unsent.close()
    return await _done(state, parts, lease, records, storage, etag, sha256, publishing)


async def _done(
    state: UploadState,
    parts: PartLayout,
    lease: Lease,
    records: UploadRecords,
    storage: S3Storage,
    etag: str,
    sha256: str,
    published: bool,
) -> ObjectInfo:
    backend = parts.finished().backend()
    if published:
        storage.forget_recent(state.key)
    else:
        backend[OBJECT_ETAG] = etag
    await lease.save(replace(state, done=True, backend=backend))
    if parts.tail is not None:
        await records.delete_tail(state.id, parts.tail)
    return ObjectInfo(
        key=state.key,
        size=state.offset,
        etag=etag,
        last_modified=datetime.now().astimezone(),
        content_type=state.content_type,
        sha256=sha256,
    )


async def assembled_before(
    storage: S3Storage,
    target: UploadTarget,
    state: UploadState,
    parts: PartLayout,
    records: UploadRecords,
) -> bool:
    """Whether an earlier finish of this upload completed its multipart upload and
    then stopped before publishing it (a crash, a lost answer): the staging key holds
    the object these parts make, known by the multipart ETag (the MD5 of the parts'
    MD5s, as S3 computes it; the tail, read again, was the last part)."""
    etags = [etag for _, etag, _ in parts.parts]
    if parts.tail is not None:
        etags.append(await _tail_md5(storage, records, state, parts))
    expected = multipart_etag(etags)
    if expected is None or await target.staged_etag() != expected:
        return False  # not there, or not MD5 ETags (e.g. SSE-KMS): nothing to compare
    log.info("upload %s: publishing what an earlier finish assembled", state.id)
    return True


async def _tail_md5(storage: S3Storage, records: UploadRecords, state: UploadState, parts: PartLayout) -> str:
    tail = PartBuffer(storage.budget)
    try:
        await records.read_tail(state, parts, tail)
        return (await tail.md5()).hex()
    finally:
        tail.close()
