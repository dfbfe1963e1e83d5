"""tus concatenation on S3: sealed partial uploads assembled into the final object.

Each sealed partial's bytes are one object, its upload's ``object`` key (finish.py,
``publishing=False``), whose ETag its state records. The final is one multipart
upload at a staging key of this process's (s3.writers records it, so that others
abort it if the process dies), with parts chosen by plan.concat_parts:

- a partial of at least S3's part minimum (5 MiB) becomes UploadPartCopy parts
  (CopySourceRange, CopySourceIfMatch its recorded ETag): S3 copies the bytes,
  nothing passes through the proxy;
- smaller partials are read (GetObject, IfMatch) and sent as parts of at least
  5 MiB, consecutive ones together, one part in memory (PartBuffer) at a time each.

Then it is completed and published with its SHA-256 and content type exactly as a
finished upload is (s3.publish). Only then is the final's state written (done), and
the partials removed, state last, as terminating them would.

The SHA-256: partial 1's saved state goes on over the bytes of partials 2..n, read
again by GetObject while the copies run (SHA-256 runs over the bytes in order, so
the partials' own digests, each from the initial state, cannot be combined).

A failure aborts the multipart upload and removes the staging object; a crash
leaves them to the writers' sweep of ended processes. Either way no object is made
at the key, and the partials stay until they expire.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable
from dataclasses import replace
from datetime import datetime

from proxy.storage import layout
from proxy.storage.base import ObjectInfo, ObjectTooLarge, StorageError, UpstreamError
from proxy.storage.resumable import UploadState, check_sealed
from proxy.storage.s3.errors import quoted_etag, upstream
from proxy.storage.s3.limits import MAX_OBJECT_SIZE
from proxy.storage.s3.multipart import UploadTarget
from proxy.storage.s3.objects import READ_CHUNK, S3Storage
from proxy.storage.s3.publish import COPY_RANGE_SIZE, abort_recorded, publish, remove_staged
from proxy.storage.s3.resumable.finish import OBJECT_ETAG
from proxy.storage.s3.resumable.lease import Leases
from proxy.storage.s3.resumable.plan import ConcatPart, PartLayout, concat_parts
from proxy.storage.s3.resumable.records import UploadRecords
from proxy.streaming.part_buffer import PartBuffer
from proxy.streaming.sha256_state import ResumableSha256

log = logging.getLogger(__name__)
# Hashed on a worker thread in blocks this large, so that both cores work and the
# event loop is not held by hashing.
HASH_BLOCK = 4 * 1024 * 1024


class Source:
    """A sealed partial's object: its key, size and ETag."""

    def __init__(self, state: UploadState) -> None:
        etag = state.backend.get(OBJECT_ETAG)
        if not isinstance(etag, str):
            raise StorageError(f"upload {state.id} is no sealed partial upload")
        self.key = layout.upload_object_key(state.id)
        self.size = state.offset
        self.etag = etag


async def concatenate(
    final: UploadState,
    partials: list[UploadState],
    *,
    storage: S3Storage,
    records: UploadRecords,
    leases: Leases,
    copy_piece: int = COPY_RANGE_SIZE,
) -> ObjectInfo:
    check_sealed(partials)
    held = [leases.holding(p) for p in partials]  # they must be ours, and still held
    sources = [Source(p) for p in partials]
    size = sum(s.size for s in sources)
    if size > MAX_OBJECT_SIZE:
        raise ObjectTooLarge(f"{size} bytes is over S3's object limit of {MAX_OBJECT_SIZE}")
    try:
        plan = concat_parts([s.size for s in sources], copy_piece)
    except ValueError as exc:
        raise ObjectTooLarge(str(exc)) from None
    target = storage.upload_target(final.key, final.content_type)
    hashing = asyncio.ensure_future(_hash_on(storage, partials[0].sha256, sources[1:]))
    try:
        sha256, etag = await _assemble(storage, target, sources, plan, hashing)
    finally:
        if not hashing.done():
            hashing.cancel()
            await asyncio.wait([hashing])
    storage.forget_recent(final.key)
    # The final exists only once its object does, complete and done.
    parts = PartLayout.for_new_upload(size, storage.cfg.part_size).finished()
    await records.put_state(replace(final, sha256=sha256, done=True, backend=parts.backend()), if_match=None)
    for partial, lease in zip(partials, held, strict=True):
        try:
            await records.delete_all_but_state(partial.id)
            await lease.remove()
        except StorageError as exc:
            log.warning("upload %s: a partial used by a final was not removed: %s", partial.id, exc)
    return ObjectInfo(
        key=final.key,
        size=size,
        etag=etag,
        last_modified=datetime.now().astimezone(),
        content_type=final.content_type,
        sha256=ResumableSha256(sha256).hexdigest(),
    )


async def _assemble(
    storage: S3Storage,
    target: UploadTarget,
    sources: list[Source],
    plan: list[ConcatPart],
    hashing: Awaitable[str],
) -> tuple[str, str]:
    """The object at ``target.key``; returns its SHA-256 state and its ETag."""
    if not plan:  # every partial is empty
        sha256 = await hashing
        empty = PartBuffer(storage.budget)
        try:
            return sha256, await target.put(empty, ResumableSha256(sha256).hexdigest())
        finally:
            empty.close()
    upload_id = await target.create_multipart()
    writers = storage.writers
    await writers.started(target.staging_key, upload_id)
    try:
        slots = asyncio.Semaphore(storage.cfg.max_concurrency)
        etags = dict(
            await asyncio.gather(
                *(
                    _part(storage, target, upload_id, n, part, sources, slots)
                    for n, part in enumerate(plan, 1)
                )
            )
        )
        sha256 = await hashing
        await target.complete(upload_id, etags)
        await writers.ended(upload_id)
        size = sum(part.size for part in plan)
        hexdigest = ResumableSha256(sha256).hexdigest()
        etag = await publish(
            target, size, hexdigest, writers=writers, max_concurrency=storage.cfg.max_concurrency
        )
    except BaseException:
        await storage.cleanups.run(_abandon(target, upload_id, storage))
        raise
    return sha256, etag


async def _abandon(target: UploadTarget, upload_id: str, storage: S3Storage) -> None:
    await abort_recorded(target, upload_id, storage.writers)  # a completed one counts as aborted
    await remove_staged(target)


async def _part(
    storage: S3Storage,
    target: UploadTarget,
    upload_id: str,
    number: int,
    part: ConcatPart,
    sources: list[Source],
    slots: asyncio.Semaphore,
) -> tuple[int, str]:
    client = target.client
    async with slots:
        if part.copied:
            index, start, end = part.ranges[0]
            source = sources[index]
            response = await upstream(
                client.upload_part_copy(
                    Bucket=target.bucket,
                    Key=target.staging_key,
                    UploadId=upload_id,
                    PartNumber=number,
                    CopySource={"Bucket": target.bucket, "Key": source.key},
                    CopySourceRange=f"bytes={start}-{end - 1}",
                    CopySourceIfMatch=source.etag,
                )
            )
            return number, quoted_etag(response["CopyPartResult"]["ETag"])
        buffer = PartBuffer(storage.budget)
        try:
            for index, start, end in part.ranges:
                async for chunk in _read(storage, sources[index], start, end):
                    await buffer.add(chunk)
            response = await upstream(
                client.upload_part(
                    Bucket=target.bucket,
                    Key=target.staging_key,
                    UploadId=upload_id,
                    PartNumber=number,
                    Body=await buffer.body(),
                    ContentLength=buffer.size,
                    **target.checksum_args(buffer),
                )
            )
        finally:
            buffer.close()
        return number, quoted_etag(response["ETag"])


async def _read(storage: S3Storage, source: Source, start: int, end: int) -> AsyncIterator[bytes]:
    """The bytes ``start`` to ``end`` (exclusive) of a partial's object, as it was sealed."""
    if start >= end:
        return
    response = await upstream(
        storage.client.get_object(
            Bucket=storage.bucket, Key=source.key, Range=f"bytes={start}-{end - 1}", IfMatch=source.etag
        )
    )  # without key=: a partial's object gone is the storage's failure, and its key stays unsaid
    stream = response["Body"]
    got = 0
    try:
        while True:
            chunk = await upstream(stream.read(READ_CHUNK))
            if not chunk:
                break
            got += len(chunk)
            yield chunk
    finally:
        stream.close()
    if got != end - start:
        raise UpstreamError(f"{source.key} gave {got} bytes, not {end - start}")


async def _hash_on(storage: S3Storage, state: str, sources: list[Source]) -> str:
    """``state`` (partial 1's saved SHA-256) gone on over the bytes of ``sources``,
    hashed on a worker thread a block at a time while the next block is read."""
    sha = ResumableSha256(state)
    hashing: asyncio.Future[None] | None = None
    block = bytearray()
    for source in sources:
        async for chunk in _read(storage, source, 0, source.size):
            block += chunk
            if len(block) >= HASH_BLOCK:
                if hashing is not None:
                    await hashing
                hashing = asyncio.ensure_future(asyncio.to_thread(sha.update, block))
                block = bytearray()
    if hashing is not None:
        await hashing
    sha.update(block)
    return sha.state()
