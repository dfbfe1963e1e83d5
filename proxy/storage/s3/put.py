"""Writing objects to S3: one streaming upload.

S3Upload sends a small body with one PutObject and a larger one as a multipart
upload. Parts are filled from the client one at a time and sent with up to
``max_concurrency`` in flight (PartSender), so an upload holds at most
``max_concurrency + 1`` part buffers, each reserved from the process-wide
MemoryBudget before it is read. Any failure aborts the multipart upload, so nothing
partial is left in the bucket.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from proxy.storage.base import ObjectTooLarge
from proxy.storage.s3.limits import (
    MAX_OBJECT_SIZE,
    MAX_PARTS,
    part_size_for_known_size,
    part_size_for_unknown_size,
)
from proxy.storage.s3.multipart import PartSender, UploadTarget
from proxy.streaming.bodies import HashingReader
from proxy.streaming.budget import MemoryBudget
from proxy.streaming.cleanups import Cleanups

log = logging.getLogger(__name__)


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
        self._target = UploadTarget(client, bucket, key, content_type or "application/octet-stream")
        self._size = size
        self._settings = settings
        self._budget = budget
        self._cleanups = cleanups
        self._upload_id: str | None = None
        self._sender: PartSender | None = None

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
                etag = await self._target.put(first, reader.sha256)
                return UploadResult(reader.size, reader.sha256, etag)
            self._upload_id = await self._target.create_multipart()
            self._sender = self._target.part_sender(
                self._upload_id, max_concurrency=self._settings.max_concurrency, budget=self._budget
            )
            self._sender.start(1, first, reserved)
            reserved = 0
            del first
            await self._send_rest(reader, self._sender)
            etag, size = await self._target.complete(self._upload_id, self._sender.etags)
            self._upload_id = None
            etag = await self._target.attach_sha256(etag, size, reader.sha256)
            return UploadResult(reader.size, reader.sha256, etag)
        except BaseException:
            await self._cleanups.run(self._abort())
            raise
        finally:
            self._budget.release(reserved)

    async def _send_rest(self, reader: HashingReader, sender: PartSender) -> None:
        number = 1
        while not await reader.at_eof():
            number += 1
            if number > MAX_PARTS:
                raise ObjectTooLarge(f"the body needs more than {MAX_PARTS} parts")
            size = self._part_size(number)
            reserved = await self._budget.acquire(size)
            try:
                data = await reader.read(size)
                await sender.wait_for_slot()
            except BaseException:
                self._budget.release(reserved)
                raise
            sender.start(number, data, reserved)
        await sender.wait_all()

    async def _abort(self) -> None:
        if self._sender is not None:
            await self._sender.cancel()
        if self._upload_id is None:
            return
        try:
            await self._target.abort(self._upload_id)
        except Exception:
            # Logged, not raised: another error is already on its way up.
            log.exception("could not abort multipart upload %s of %s", self._upload_id, self._target.key)
