"""Publishing a complete resumable upload as its object, and taking up a finish that
stopped half-way.

A finish completes the multipart upload (or, for an upload that never filled a
part, puts the tail as one object), attaches the sha256 (a copy onto itself) and
then saves the state as done. If it stops in between (a crash, a lost answer), the
multipart upload is gone and the next finish fails on it; that finish then
recognises the object (published_before) and takes the work up where it stopped.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from datetime import datetime

from proxy.storage.base import ObjectInfo, ObjectNotFound, UpstreamError
from proxy.storage.resumable import UploadState
from proxy.storage.s3.multipart import UploadTarget, multipart_etag
from proxy.storage.s3.objects import S3Storage
from proxy.storage.s3.resumable.lease import Lease
from proxy.storage.s3.resumable.plan import PartLayout
from proxy.storage.s3.resumable.records import UploadRecords
from proxy.streaming.part_buffer import PartBuffer
from proxy.streaming.sha256_state import ResumableSha256

log = logging.getLogger(__name__)


async def finish_upload(
    state: UploadState,
    *,
    lease: Lease,
    records: UploadRecords,
    target: UploadTarget,
    storage: S3Storage,
) -> ObjectInfo:
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
                etag = await target.attach_sha256(etag, state.offset, sha256)
            except UpstreamError:
                published = await published_before(storage, target, state, parts, records, sha256)
                if published is None:
                    raise
                etag = published
    finally:
        if unsent is not None:
            unsent.close()
    storage.forget_recent(state.key)
    await lease.save(replace(state, done=True, backend=parts.finished().backend()))
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


async def published_before(
    storage: S3Storage,
    target: UploadTarget,
    state: UploadState,
    parts: PartLayout,
    records: UploadRecords,
    sha256: str,
) -> str | None:
    """The object's ETag if an earlier finish of this upload already completed it
    and then stopped before saving done (a crash, a lost answer): that multipart
    upload is gone, so this finish fails. The object is known by the sha256 the
    earlier finish attached, or before that by the multipart ETag its parts make
    (the MD5 of their MD5s, as S3 computes it; the tail, read again, was the last
    part), and the work is taken up there."""
    try:
        info = await storage.stat(state.key)
    except ObjectNotFound:
        return None
    if info.size != state.offset:
        return None
    if info.sha256 == sha256:
        return info.etag
    etags = [etag for _, etag, _ in parts.parts]
    if parts.tail is not None:
        etags.append(await _tail_md5(storage, records, state, parts))
    expected = multipart_etag(etags)
    if expected is None or info.etag != expected:
        return None  # another version, or not MD5 ETags (e.g. SSE-KMS): nothing to compare
    log.info("upload %s: finishing the work of an earlier finish that stopped", state.id)
    return await target.attach_sha256(info.etag, info.size, sha256)


async def _tail_md5(storage: S3Storage, records: UploadRecords, state: UploadState, parts: PartLayout) -> str:
    tail = PartBuffer(storage.budget)
    try:
        await records.read_tail(state, parts, tail)
        return (await tail.md5()).hex()
    finally:
        tail.close()
