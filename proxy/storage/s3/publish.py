"""Publishing an object assembled by a multipart upload: a copy from its staging key
to its key, with its SHA-256 and content type.

S3 takes user metadata only when an object is written, and a streaming upload knows
its SHA-256 only once the last byte has passed, too late for CreateMultipartUpload.
Completing at the key and then copying the object onto itself to add the hash
relabels whatever the key holds by then, a racing writer's version included (moto
and Ceph RGW ignore CopySourceIfMatch on a copy onto the same key). Completed at a
key no other upload writes and copied to its key in one CopyObject, the object
lands whole with its own hash, in one step that is atomic at the key like a
PutObject, and the ETag the copy answers is the version this upload made. The copy
costs what the copy onto itself cost; the staging object is removed afterwards.

CopyObject takes at most 5 GiB; a larger object is copied as a multipart upload of
UploadPartCopy ranges, created with its metadata.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace

from proxy.storage.base import StorageError, UpstreamError
from proxy.storage.s3.errors import quoted_etag, upstream
from proxy.storage.s3.limits import MAX_PART_SIZE, MAX_PARTS
from proxy.storage.s3.multipart import SHA256_META, UploadTarget
from proxy.storage.s3.writers import Writers

log = logging.getLogger(__name__)

MiB = 1024 * 1024
# The largest object one CopyObject takes, and the range one UploadPartCopy takes.
MAX_COPY_SIZE = MAX_PART_SIZE
# Ranges of a multipart copy: large, as each is a server-side copy, but enough of
# them to run several at once.
COPY_RANGE_SIZE = 1024 * MiB


async def publish(
    target: UploadTarget,
    size: int,
    sha256: str,
    *,
    writers: Writers,
    max_concurrency: int,
    copy_limit: int = MAX_COPY_SIZE,
) -> str:
    """Copy the object at ``target.staging_key`` (``size`` bytes) to ``target.key``
    with its hash and content type, remove the staging object, and return the ETag
    of the version made at the key. On failure (UpstreamError) the key is as it
    was and the staging object stays, for the caller to publish again or remove.

    ``copy_limit``: objects larger than this are copied in ranges (S3's limit;
    smaller in tests)."""
    try:
        if size <= copy_limit:
            etag = await _copy(target, sha256)
        else:
            etag = await _copy_in_ranges(target, size, sha256, writers, max_concurrency, copy_limit)
    except UpstreamError:
        published = await published_etag(target, size, sha256)
        if published is None:
            raise
        log.info("%s: the copy's answer was lost, but it published the object", target.key)
        etag = published
    if target.staging_key != target.key:
        await remove_staged(target)
    return etag


async def remove_staged(target: UploadTarget) -> None:
    """Remove the staging object. Never raises: what is left is removed with its
    writer's or upload's other objects."""
    try:
        await upstream(target.client.delete_object(Bucket=target.bucket, Key=target.staging_key))
    except StorageError as exc:
        log.warning("could not remove the staging object of %s: %s", target.key, exc)


async def _copy(target: UploadTarget, sha256: str) -> str:
    response = await upstream(
        target.client.copy_object(
            Bucket=target.bucket,
            Key=target.key,
            CopySource={"Bucket": target.bucket, "Key": target.staging_key},
            MetadataDirective="REPLACE",
            ContentType=target.content_type,
            Metadata={SHA256_META: sha256},
        )
    )
    etag = response.get("CopyObjectResult", {}).get("ETag")
    if not etag:
        raise UpstreamError("S3 named no ETag for the object it copied")
    return quoted_etag(etag)


async def _copy_in_ranges(
    target: UploadTarget, size: int, sha256: str, writers: Writers, max_concurrency: int, copy_limit: int
) -> str:
    """A multipart upload at the key, created with the metadata, whose parts are
    copied from ranges of the staging object."""
    direct = replace(target, staging_key=target.key)
    upload_id = await direct.create_multipart({SHA256_META: sha256})
    await writers.started(target.key, upload_id)
    try:
        range_size = min(copy_limit, max(COPY_RANGE_SIZE, -(-size // MAX_PARTS)))
        ranges = [(start, min(start + range_size, size) - 1) for start in range(0, size, range_size)]
        slots = asyncio.Semaphore(max_concurrency)

        async def copy_range(number: int, first: int, last: int) -> tuple[int, str]:
            async with slots:
                response = await upstream(
                    target.client.upload_part_copy(
                        Bucket=target.bucket,
                        Key=target.key,
                        UploadId=upload_id,
                        PartNumber=number,
                        CopySource={"Bucket": target.bucket, "Key": target.staging_key},
                        CopySourceRange=f"bytes={first}-{last}",
                    )
                )
            return number, quoted_etag(response["CopyPartResult"]["ETag"])

        copies = [copy_range(n, first, last) for n, (first, last) in enumerate(ranges, start=1)]
        etags = dict(await asyncio.gather(*copies))
        etag = await direct.complete(upload_id, etags)
    except BaseException:
        await abort_recorded(direct, upload_id, writers)
        raise
    await writers.ended(upload_id)
    return etag


async def abort_recorded(target: UploadTarget, upload_id: str, writers: Writers) -> None:
    """Abort a failed multipart upload and drop its record. Never raises, as the
    upload's own failure is on its way up; an upload that could not be aborted keeps
    its record, so that it is aborted once this process has ended."""
    try:
        await target.abort(upload_id)
    except Exception:
        log.exception("could not abort multipart upload %s of %s", upload_id, target.key)
    else:
        await writers.ended(upload_id)


async def published_etag(target: UploadTarget, size: int, sha256: str) -> str | None:
    """The ETag of the object at the key if it is this upload's: its size and the
    hash it carries are this upload's (a lost answer, or an earlier attempt that
    got that far). Another writer's copy of the very same bytes counts too: it is
    the same object."""
    try:
        head = await upstream(target.client.head_object(Bucket=target.bucket, Key=target.key), key=target.key)
    except StorageError:
        return None
    if head.get("ContentLength") != size or head.get("Metadata", {}).get(SHA256_META) != sha256:
        return None
    return quoted_etag(head["ETag"])
