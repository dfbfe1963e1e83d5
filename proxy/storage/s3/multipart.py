"""The S3 calls that write one object: a single PutObject, or a multipart upload
whose parts go with a bounded number in flight. Shared by streaming uploads (put)
and resumable ones."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import ClientError

from proxy.metrics.definitions import PARTS_STREAMED, PARTS_WHOLE
from proxy.storage.base import StorageError, UpstreamError
from proxy.storage.s3.errors import error_code, quoted_etag, upstream
from proxy.storage.s3.part_stream import PartStreamer
from proxy.streaming.part_buffer import PartBuffer

log = logging.getLogger(__name__)
# The user metadata (x-amz-meta-sha256) that carries an object's SHA-256.
SHA256_META = "sha256"


@dataclass(frozen=True)
class UploadTarget:
    """The object an upload writes, and the S3 calls that write it.

    A multipart upload is assembled at ``staging_key``, a key no other upload
    writes, and published to ``key`` with its SHA-256 afterwards (s3.publish): S3
    takes metadata only when an object is written, and the hash is known only once
    the last byte has passed. A single PutObject knows it already and writes ``key``.
    """

    client: Any
    bucket: str
    key: str
    content_type: str
    staging_key: str
    # Send each body's CRC32, computed as its bytes came (request_checksum_calculation
    # "when_supported"), so that botocore does not read the body again to compute it.
    checksums: bool = True
    # Sends a part while it fills (plain HTTP endpoints only): PartSender.stream.
    streamer: PartStreamer | None = None

    def checksum_args(self, part: PartBuffer) -> dict[str, str]:
        return {"ChecksumCRC32": part.crc32} if self.checksums else {}

    async def put(self, part: PartBuffer, sha256: str) -> str:
        """The whole object in one PutObject to ``key``; returns its ETag."""
        response = await upstream(
            self.client.put_object(
                Bucket=self.bucket,
                Key=self.key,
                Body=await part.body(),
                ContentLength=part.size,
                ContentType=self.content_type,
                Metadata={SHA256_META: sha256},
                **self.checksum_args(part),
            )
        )
        return quoted_etag(response["ETag"])

    async def create_multipart(self, metadata: Mapping[str, str] | None = None) -> str:
        response = await upstream(
            self.client.create_multipart_upload(
                Bucket=self.bucket,
                Key=self.staging_key,
                ContentType=self.content_type,
                Metadata=dict(metadata or {}),
            )
        )
        upload_id: str = response["UploadId"]
        return upload_id

    def part_sender(self, upload_id: str, *, max_concurrency: int) -> PartSender:
        return PartSender(self, upload_id, max_concurrency=max_concurrency)

    async def complete(self, upload_id: str, etags: Mapping[int, str]) -> str:
        """Complete the multipart upload at ``staging_key`` with exactly these parts
        (S3 refuses the call if a part's ETag is not the one it holds); returns the
        ETag of the object it made.

        That ETag comes from Complete's answer or, where the server leaves it empty
        (Ceph RGW), from the parts' ETags as S3 computes it. If the answer is lost
        (or a retry finds the upload gone because the first call completed it), the
        object is looked at: holding the object these parts make, it was completed.
        """
        parts = [{"PartNumber": n, "ETag": etags[n]} for n in sorted(etags)]
        expected = multipart_etag([etags[n] for n in sorted(etags)])
        try:
            response = await upstream(
                self.client.complete_multipart_upload(
                    Bucket=self.bucket,
                    Key=self.staging_key,
                    UploadId=upload_id,
                    MultipartUpload={"Parts": parts},
                )
            )
        except UpstreamError:
            if expected is None or await self.staged_etag() != expected:
                raise
            log.info("%s: Complete's answer was lost, but it completed the object", self.staging_key)
            return expected
        etag = response.get("ETag")
        if etag:
            return quoted_etag(etag)
        if expected is None:
            raise UpstreamError("S3 named no ETag for the object it completed")
        return expected

    async def staged_etag(self) -> str | None:
        """The ETag of the object at ``staging_key``; None if there is none."""
        try:
            head = await upstream(
                self.client.head_object(Bucket=self.bucket, Key=self.staging_key), key=self.staging_key
            )
        except StorageError:
            return None
        return quoted_etag(head["ETag"])

    async def abort(self, upload_id: str) -> None:
        """Abort the multipart upload; one that is gone already counts as aborted."""
        await upstream(
            _unless_gone(
                self.client.abort_multipart_upload(
                    Bucket=self.bucket, Key=self.staging_key, UploadId=upload_id
                )
            )
        )


def multipart_etag(part_etags: list[str]) -> str | None:
    """The ETag S3 gives an object completed from parts with these ETags: the MD5 of
    their MD5s and the part count; None where part ETags are no MD5s (SSE-KMS)."""
    try:
        md5s = b"".join(bytes.fromhex(etag.strip('"')) for etag in part_etags)
    except ValueError:
        return None
    if len(md5s) != 16 * len(part_etags):
        return None
    return f'"{hashlib.md5(md5s, usedforsecurity=False).hexdigest()}-{len(part_etags)}"'


async def _unless_gone(call: Awaitable[Any]) -> None:
    try:
        await call
    except ClientError as exc:
        if error_code(exc) not in ("NoSuchUpload", "404"):
            raise


class PartSender:
    """Sends parts of one multipart upload with at most ``max_concurrency`` in flight.

    Each part's buffer belongs to the sender from ``start`` on; it is closed (its
    memory reservation and file given back) once S3 has the part, stored or not.
    """

    def __init__(self, target: UploadTarget, upload_id: str, *, max_concurrency: int) -> None:
        self._target = target
        self._upload_id = upload_id
        self._max_concurrency = max_concurrency
        self._tasks: set[asyncio.Task[None]] = set()
        self.etags: dict[int, str] = {}

    async def wait_for_slot(self) -> None:
        """Wait until another part may start; raises the first part failure."""
        while len(self._tasks) >= self._max_concurrency:
            await self._wait_any()

    def start(self, number: int, part: PartBuffer) -> None:
        self._tasks.add(asyncio.ensure_future(self._upload(number, part)))

    def stream(self, number: int, part: PartBuffer, size: int, streamer: PartStreamer) -> StreamedPart:
        """Send part ``number`` while ``part`` fills to ``size`` bytes. The buffer stays
        the caller's until StreamedPart.hand_over() (it is whole), or withdraw()."""
        streamed = StreamedPart(number, part)
        streamed.task = asyncio.ensure_future(self._stream(streamed, size, streamer))
        self._tasks.add(streamed.task)
        return streamed

    async def withdraw(self, streamed: StreamedPart) -> None:
        """Stop sending a part that will not be whole (its body was cut off): S3 drops
        what it got of it, and its buffer is left to the caller."""
        task = streamed.task
        task.cancel()
        await asyncio.wait([task])
        self._tasks.discard(task)
        if not task.cancelled():
            with contextlib.suppress(BaseException):
                task.result()

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

    async def _upload(self, number: int, part: PartBuffer) -> None:
        try:
            self.etags[number] = await self._send_whole(number, part)
        finally:
            part.close()

    async def _stream(self, streamed: StreamedPart, size: int, streamer: PartStreamer) -> None:
        target, number, part = self._target, streamed.number, streamed.part
        try:
            etag = await streamer.send(target.staging_key, self._upload_id, number, part, size)
            if etag is None:  # not streamed: sent through botocore once whole
                await part.until_stored(size)
                etag = await self._send_whole(number, part)
            else:
                PARTS_STREAMED.inc()
            self.etags[number] = etag
        finally:
            streamed.done = True
            if streamed.handed_over:
                part.close()

    async def _send_whole(self, number: int, part: PartBuffer) -> str:
        target = self._target
        PARTS_WHOLE.inc()
        response = await upstream(
            target.client.upload_part(
                Bucket=target.bucket,
                Key=target.staging_key,
                UploadId=self._upload_id,
                PartNumber=number,
                Body=await part.body(),
                ContentLength=part.size,
                **target.checksum_args(part),
            )
        )
        etag: str = response["ETag"]
        return etag

    async def _wait_any(self) -> None:
        done, _ = await asyncio.wait(self._tasks, return_when=asyncio.FIRST_COMPLETED)
        self._tasks -= done
        for task in done:
            task.result()  # re-raise the first part failure


class StreamedPart:
    """A part on its way to S3 while its buffer still fills (PartSender.stream)."""

    def __init__(self, number: int, part: PartBuffer) -> None:
        self.number = number
        self.part = part
        self.task: asyncio.Future[None]
        self.handed_over = False
        self.done = False

    def hand_over(self) -> None:
        """The part is whole: its buffer is the sender's now, closed once sent."""
        self.handed_over = True
        if self.done:
            self.part.close()
