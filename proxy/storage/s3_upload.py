"""One streaming upload to S3: a PutObject for small bodies, else a multipart upload.

Parts are filled from the client one at a time and sent with up to
``max_concurrency`` in flight, so an upload holds at most ``max_concurrency + 1``
part buffers, each reserved from the process-wide MemoryBudget before it is read.
Any failure aborts the multipart upload, so nothing partial is left in the bucket.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from proxy.storage.base import ObjectTooLarge
from proxy.storage.budget import MemoryBudget
from proxy.storage.cleanup import Cleanups
from proxy.storage.part_sizing import (
    MAX_OBJECT_SIZE,
    MAX_PART_SIZE,
    MAX_PARTS,
    part_size_for_known_size,
    part_size_for_unknown_size,
)
from proxy.storage.s3_errors import quoted_etag, upstream
from proxy.streams import HashingReader

log = logging.getLogger(__name__)
SHA256_META = "sha256"


@dataclass(frozen=True)
class UploadSettings:
    part_size: int
    max_concurrency: int


@dataclass(frozen=True)
class UploadResult:
    size: int
    sha256: str
    etag: str


class S3Upload:
    def __init__(
        self,
        client: Any,
        bucket: str,
        key: str,
        *,
        content_type: str | None,
        size: int | None,
        settings: UploadSettings,
        budget: MemoryBudget,
        cleanups: Cleanups,
    ) -> None:
        if size is not None and size > MAX_OBJECT_SIZE:
            raise ObjectTooLarge(f"{size} bytes is over S3's object limit of {MAX_OBJECT_SIZE}")
        self._client = client
        self._bucket = bucket
        self._key = key
        self._content_type = content_type or "application/octet-stream"
        self._size = size
        self._settings = settings
        self._budget = budget
        self._cleanups = cleanups
        self._upload_id: str | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._parts: dict[int, str] = {}

    def _part_size(self, number: int) -> int:
        if self._size is not None:
            return part_size_for_known_size(self._size, self._settings.part_size)
        return part_size_for_unknown_size(number, self._settings.part_size)

    async def run(self, body: AsyncIterator[bytes]) -> UploadResult:
        reader = HashingReader(body)
        reserved = await self._budget.acquire(self._part_size(1))
        try:
            first = await reader.read(self._part_size(1))
            if await reader.at_eof():
                etag = await self._put_single(first, reader.sha256)
                return UploadResult(reader.size, reader.sha256, etag)
        except BaseException:
            self._budget.release(reserved)
            raise
        try:
            await self._start_multipart()
            self._send(1, first, reserved)
            del first
            await self._send_rest(reader)
            etag = await self._complete(reader.sha256)
            return UploadResult(reader.size, reader.sha256, etag)
        except BaseException:
            await self._cleanups.run(self._abort())
            raise

    async def _put_single(self, data: bytearray, sha256: str) -> str:
        response = await upstream(
            self._client.put_object(
                Bucket=self._bucket,
                Key=self._key,
                Body=data,
                ContentType=self._content_type,
                Metadata={SHA256_META: sha256},
            )
        )
        return quoted_etag(response["ETag"])

    async def _start_multipart(self) -> None:
        response = await upstream(
            self._client.create_multipart_upload(
                Bucket=self._bucket, Key=self._key, ContentType=self._content_type
            )
        )
        self._upload_id = response["UploadId"]

    async def _send_rest(self, reader: HashingReader) -> None:
        number = 1
        while not await reader.at_eof():
            number += 1
            if number > MAX_PARTS:
                raise ObjectTooLarge(f"the body needs more than {MAX_PARTS} parts")
            size = self._part_size(number)
            reserved = await self._budget.acquire(size)
            try:
                data = await reader.read(size)
            except BaseException:
                self._budget.release(reserved)
                raise
            await self._wait_for_slot()
            self._send(number, data, reserved)
        while self._tasks:
            await self._wait_any()

    def _send(self, number: int, data: bytearray, reserved: int) -> None:
        task = asyncio.ensure_future(self._upload_part(number, data, reserved))
        self._tasks.add(task)

    async def _upload_part(self, number: int, data: bytearray, reserved: int) -> None:
        try:
            response = await upstream(
                self._client.upload_part(
                    Bucket=self._bucket,
                    Key=self._key,
                    UploadId=self._upload_id,
                    PartNumber=number,
                    Body=data,
                    ContentLength=len(data),
                )
            )
            self._parts[number] = response["ETag"]
        finally:
            del data
            self._budget.release(reserved)

    async def _wait_for_slot(self) -> None:
        while len(self._tasks) >= self._settings.max_concurrency:
            await self._wait_any()

    async def _wait_any(self) -> None:
        done, _ = await asyncio.wait(self._tasks, return_when=asyncio.FIRST_COMPLETED)
        self._tasks -= done
        for task in done:
            task.result()  # re-raise the first part failure

    async def _complete(self, sha256: str) -> str:
        parts = [{"PartNumber": n, "ETag": self._parts[n]} for n in sorted(self._parts)]
        await upstream(
            self._client.complete_multipart_upload(
                Bucket=self._bucket,
                Key=self._key,
                UploadId=self._upload_id,
                MultipartUpload={"Parts": parts},
            )
        )
        self._upload_id = None
        # Some servers (Ceph RGW) answer Complete with an empty ETag: ask for it.
        head = await upstream(self._client.head_object(Bucket=self._bucket, Key=self._key))
        etag = quoted_etag(head["ETag"])
        return await self._attach_sha256(etag, int(head["ContentLength"]), sha256)

    async def _attach_sha256(self, etag: str, size: int, sha256: str) -> str:
        """Store the hash as user metadata, which S3 only takes when an object is
        written: copy the object onto itself, guarded by its ETag so that a newer
        upload to the same key is never relabelled. Servers that keep the data in
        place (RGW) do this as a metadata update; S3 cannot copy more than 5 GiB."""
        if size > MAX_PART_SIZE:
            log.warning("%s: %d bytes is too large to attach sha256 metadata", self._key, size)
            return etag
        response = await upstream(
            self._client.copy_object(
                Bucket=self._bucket,
                Key=self._key,
                CopySource={"Bucket": self._bucket, "Key": self._key},
                CopySourceIfMatch=etag,
                MetadataDirective="REPLACE",
                ContentType=self._content_type,
                Metadata={SHA256_META: sha256},
            )
        )
        new_etag = response.get("CopyObjectResult", {}).get("ETag")
        return quoted_etag(new_etag) if new_etag else etag

    async def _abort(self) -> None:
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks)
        for task in self._tasks:
            if not task.cancelled():
                with contextlib.suppress(BaseException):
                    task.result()
        self._tasks.clear()
        if self._upload_id is None:
            return
        try:
            await self._client.abort_multipart_upload(
                Bucket=self._bucket, Key=self._key, UploadId=self._upload_id
            )
        except Exception:
            log.exception("could not abort multipart upload %s of %s", self._upload_id, self._key)
