"""Writing objects to S3: one streaming upload.

S3Upload sends a small body with one PutObject and a larger one as a multipart
upload, assembled at a staging key and then published with its hash (publish.py).
Parts are filled from the client one at a time and sent with up to
``max_concurrency`` in flight (PartSender), so an upload holds at most
``max_concurrency + 1`` part buffers, in memory as far as the process-wide
MemoryBudget allows, else in temporary files (PartBuffer). Any failure aborts the
multipart upload and removes the staging object, so nothing partial is left in the
bucket and the key holds what it held before.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

from proxy.storage.base import ObjectTooLarge
from proxy.storage.s3.limits import (
    MAX_OBJECT_SIZE,
    MAX_PARTS,
    part_size_for_known_size,
    part_size_for_unknown_size,
)
from proxy.storage.s3.multipart import PartSender, UploadTarget
from proxy.storage.s3.publish import abort_recorded, publish, remove_staged
from proxy.storage.s3.writers import Writers
from proxy.streaming.bodies import HashingReader
from proxy.streaming.budget import MemoryBudget
from proxy.streaming.cleanups import Cleanups
from proxy.streaming.part_buffer import PartBuffer


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
        target: UploadTarget,
        *,
        size: int | None,
        settings: UploadSettings,
        budget: MemoryBudget,
        cleanups: Cleanups,
        writers: Writers,
    ) -> None:
        if size is not None and size > MAX_OBJECT_SIZE:
            raise ObjectTooLarge(f"{size} bytes is over S3's object limit of {MAX_OBJECT_SIZE}")
        self._target = target
        self._size = size
        self._settings = settings
        self._budget = budget
        self._cleanups = cleanups
        self._writers = writers  # keeps a record of each multipart upload while it is open
        self._upload_id: str | None = None
        self._sender: PartSender | None = None

    def _part_size(self, number: int) -> int:
        if self._size is not None:
            return part_size_for_known_size(self._size, self._settings.part_size)
        return part_size_for_unknown_size(number, self._settings.part_size)

    async def run(self, body: AsyncIterator[bytes]) -> UploadResult:
        reader = HashingReader(body)
        first = PartBuffer(self._budget)
        unsent: PartBuffer | None = first  # the sender closes the parts it is given
        try:
            await reader.fill(first, self._part_size(1))
            if await reader.at_eof():
                etag = await self._target.put(first, reader.sha256)
                return UploadResult(reader.size, reader.sha256, etag)
            self._upload_id = await self._target.create_multipart()
            await self._writers.started(self._target.staging_key, self._upload_id)
            self._sender = self._target.part_sender(
                self._upload_id, max_concurrency=self._settings.max_concurrency
            )
            self._sender.start(1, first)
            unsent = None
            await self._send_rest(reader, self._sender)
            upload_id, self._upload_id = self._upload_id, None  # _publish owns it now
            etag = await self._cleanups.run(self._publish(upload_id, self._sender.etags, reader))
            return UploadResult(reader.size, reader.sha256, etag)
        except BaseException:
            await self._cleanups.run(self._abort())
            raise
        finally:
            if unsent is not None:
                unsent.close()

    async def _publish(self, upload_id: str, etags: dict[int, str], reader: HashingReader) -> str:
        """Complete the upload at its staging key and publish it with its hash. Once
        every byte is in, this runs to its end even if the request is cancelled; if
        it fails, the key holds what it held before and nothing is left."""
        try:
            await self._target.complete(upload_id, etags)
            await self._writers.ended(upload_id)
            return await publish(
                self._target,
                reader.size,
                reader.sha256,
                writers=self._writers,
                max_concurrency=self._settings.max_concurrency,
            )
        except BaseException:
            await abort_recorded(self._target, upload_id, self._writers)  # a completed one counts as aborted
            await remove_staged(self._target)
            raise

    async def _send_rest(self, reader: HashingReader, sender: PartSender) -> None:
        number = 1
        while not await reader.at_eof():
            number += 1
            if number > MAX_PARTS:
                raise ObjectTooLarge(f"the body needs more than {MAX_PARTS} parts")
            part = PartBuffer(self._budget)
            try:
                await reader.fill(part, self._part_size(number))
                await sender.wait_for_slot()
            except BaseException:
                part.close()
                raise
            sender.start(number, part)
        await sender.wait_all()

    async def _abort(self) -> None:
        if self._sender is not None:
            await self._sender.cancel()
        if self._upload_id is not None:
            await abort_recorded(self._target, self._upload_id, self._writers)
