"""The S3 calls that write one object: a single PutObject, or a multipart upload
whose parts go with a bounded number in flight. Shared by streaming uploads (put)
and resumable ones."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import ClientError

from proxy.storage.s3.errors import error_code, quoted_etag, upstream
from proxy.storage.s3.limits import MAX_PART_SIZE
from proxy.streaming.budget import MemoryBudget

log = logging.getLogger(__name__)
# The user metadata (x-amz-meta-sha256) that carries an object's SHA-256.
SHA256_META = "sha256"


@dataclass(frozen=True)
class UploadTarget:
    """The object an upload writes, and the S3 calls that write it."""

    client: Any
    bucket: str
    key: str
    content_type: str

    async def put(self, data: bytes | bytearray, sha256: str) -> str:
        """The whole object in one PutObject; returns its ETag."""
        response = await upstream(
            self.client.put_object(
                Bucket=self.bucket,
                Key=self.key,
                Body=data,
                ContentType=self.content_type,
                Metadata={SHA256_META: sha256},
            )
        )
        return quoted_etag(response["ETag"])

    async def create_multipart(self) -> str:
        response = await upstream(
            self.client.create_multipart_upload(
                Bucket=self.bucket, Key=self.key, ContentType=self.content_type
            )
        )
        upload_id: str = response["UploadId"]
        return upload_id

    def part_sender(self, upload_id: str, *, max_concurrency: int, budget: MemoryBudget) -> PartSender:
        return PartSender(self, upload_id, max_concurrency=max_concurrency, budget=budget)

    async def complete(self, upload_id: str, etags: Mapping[int, str]) -> tuple[str, int]:
        """Complete the multipart upload with exactly these parts (S3 refuses the
        call if a part's ETag is not the one it holds); returns the object's ETag
        and size."""
        parts = [{"PartNumber": n, "ETag": etags[n]} for n in sorted(etags)]
        await upstream(
            self.client.complete_multipart_upload(
                Bucket=self.bucket, Key=self.key, UploadId=upload_id, MultipartUpload={"Parts": parts}
            )
        )
        # Some servers (Ceph RGW) answer Complete with an empty ETag: ask for it.
        head = await upstream(self.client.head_object(Bucket=self.bucket, Key=self.key))
        return quoted_etag(head["ETag"]), int(head["ContentLength"])

    async def attach_sha256(self, etag: str, size: int, sha256: str) -> str:
        """Store the hash as user metadata, which S3 only takes when an object is
        written: copy the object onto itself, guarded by its ETag so that a newer
        upload to the same key is never relabelled. Servers that keep the data in
        place (RGW) do this as a metadata update; S3 cannot copy more than 5 GiB."""
        if size > MAX_PART_SIZE:
            log.warning("%s: %d bytes is too large to attach sha256 metadata", self.key, size)
            return etag
        response = await upstream(
            self.client.copy_object(
                Bucket=self.bucket,
                Key=self.key,
                CopySource={"Bucket": self.bucket, "Key": self.key},
                CopySourceIfMatch=etag,
                MetadataDirective="REPLACE",
                ContentType=self.content_type,
                Metadata={SHA256_META: sha256},
            )
        )
        new_etag = response.get("CopyObjectResult", {}).get("ETag")
        return quoted_etag(new_etag) if new_etag else etag

    async def abort(self, upload_id: str) -> None:
        """Abort the multipart upload; one that is gone already counts as aborted."""
        await upstream(
            _unless_gone(
                self.client.abort_multipart_upload(Bucket=self.bucket, Key=self.key, UploadId=upload_id)
            )
        )


async def _unless_gone(call: Awaitable[Any]) -> None:
    try:
        await call
    except ClientError as exc:
        if error_code(exc) not in ("NoSuchUpload", "404"):
            raise


class PartSender:
    """Sends parts of one multipart upload with at most ``max_concurrency`` in flight.

    Each part owns its buffer and its MemoryBudget reservation from ``start`` on and
    hands the reservation back once S3 has it, stored or not.
    """

    def __init__(
        self, target: UploadTarget, upload_id: str, *, max_concurrency: int, budget: MemoryBudget
    ) -> None:
        self._target = target
        self._upload_id = upload_id
        self._max_concurrency = max_concurrency
        self._budget = budget
        self._tasks: set[asyncio.Task[None]] = set()
        self.etags: dict[int, str] = {}

    async def wait_for_slot(self) -> None:
        """Wait until another part may start; raises the first part failure."""
        while len(self._tasks) >= self._max_concurrency:
            await self._wait_any()

    def start(self, number: int, data: bytearray, reserved: int) -> None:
        self._tasks.add(asyncio.ensure_future(self._upload(number, data, reserved)))

    async def wait_all(self) -> None:
        """Wait for every part started; raises the first part failure."""
        while self._tasks:
            await self._wait_any()

    async def cancel(self) -> None:
        """Stop the parts still in flight and wait until they have let go of their buffers."""
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks)
        for task in self._tasks:
            if not task.cancelled():
                with contextlib.suppress(BaseException):
                    task.result()
        self._tasks.clear()

    async def _upload(self, number: int, data: bytearray, reserved: int) -> None:
        target = self._target
        try:
            response = await upstream(
                target.client.upload_part(
                    Bucket=target.bucket,
                    Key=target.key,
                    UploadId=self._upload_id,
                    PartNumber=number,
                    Body=data,
                    ContentLength=len(data),
                )
            )
            self.etags[number] = response["ETag"]
        finally:
            del data
            self._budget.release(reserved)

    async def _wait_any(self) -> None:
        done, _ = await asyncio.wait(self._tasks, return_when=asyncio.FIRST_COMPLETED)
        self._tasks -= done
        for task in done:
            task.result()  # re-raise the first part failure
