"""S3 backend through aioboto3: objects, with one client for the application's lifetime."""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import aioboto3
from botocore.config import Config as BotoConfig

from proxy.config import S3Config
from proxy.metrics.definitions import READS_BOTOCORE, READS_RELAYED
from proxy.metrics.s3 import MeasuredClient
from proxy.rules.keys import is_valid_key, validate_cursor, validate_key, validate_list_prefix
from proxy.storage import layout
from proxy.storage.base import BodyRelay, ObjectInfo, ObjectPage
from proxy.storage.s3.deadlines import DeadlineClient
from proxy.storage.s3.errors import quoted_etag, upstream
from proxy.storage.s3.folders import delete_prefix
from proxy.storage.s3.multipart import SHA256_META, UploadTarget
from proxy.storage.s3.part_stream import PartStreamer
from proxy.storage.s3.plain_http import PlainEndpoint
from proxy.storage.s3.put import S3Upload, UploadSettings
from proxy.storage.s3.relay import S3Relay
from proxy.storage.s3.writers import Writers
from proxy.streaming.budget import MemoryBudget
from proxy.streaming.cleanups import Cleanups

READ_CHUNK = 256 * 1024


class RecentStats:
    """Validators of objects seen in the last few seconds.

    A video player sends a burst of range requests for one object: one HeadObject
    serves the burst. Entries are only hints (reads carry IfMatch), so staleness is safe.
    """

    SECONDS = 5.0
    MAX_ENTRIES = 4096

    def __init__(self) -> None:
        self._seen: dict[str, tuple[float, ObjectInfo]] = {}

    def get(self, key: str) -> ObjectInfo | None:
        seen = self._seen.get(key)
        if seen is None or time.monotonic() - seen[0] >= self.SECONDS:
            return None
        return seen[1]

    def remember(self, info: ObjectInfo) -> None:
        self._seen.pop(info.key, None)  # re-insert: the oldest entry goes first
        self._seen[info.key] = (time.monotonic(), info)
        if len(self._seen) > self.MAX_ENTRIES:
            self._seen.pop(next(iter(self._seen)))

    def forget(self, key: str) -> None:
        self._seen.pop(key, None)


def boto_config(cfg: S3Config) -> BotoConfig:
    return BotoConfig(
        region_name=cfg.region,
        max_pool_connections=cfg.max_pool_connections,
        connect_timeout=cfg.connect_timeout,
        read_timeout=cfg.read_timeout,
        retries={"mode": cfg.retry_mode, "total_max_attempts": cfg.max_attempts},
        s3={"addressing_style": cfg.addressing_style},
        request_checksum_calculation=cfg.request_checksum_calculation,
        response_checksum_validation=cfg.response_checksum_validation,
        tcp_keepalive=True,
    )


class S3Storage:
    def __init__(self, cfg: S3Config, session: aioboto3.Session | None = None) -> None:
        self.cfg = cfg
        self.bucket = cfg.bucket
        self.budget = MemoryBudget(cfg.memory_budget)
        # Work that must outlive a cancelled request; close() waits for it.
        self.cleanups = Cleanups()
        self._recent = RecentStats()
        self._settings = UploadSettings(cfg.part_size, cfg.max_concurrency)
        self._session = session or aioboto3.Session()
        self._stack = contextlib.AsyncExitStack()
        self._client: Any = None
        self._relay: S3Relay | None = None
        self._part_streamer: PartStreamer | None = None
        # Records of the multipart uploads in progress, for other processes to abort
        # should this one die; and the sweep that does so for others.
        self.writers = Writers(self.bucket)

    @property
    def client(self) -> Any:
        if self._client is None:
            raise RuntimeError("S3Storage.start() has not been awaited")
        return self._client

    async def start(self) -> None:
        client = await self._stack.enter_async_context(
            self._session.client("s3", endpoint_url=self.cfg.endpoint_url, config=boto_config(self.cfg))
        )
        # Measured outside the deadline, so that a call past it counts as failed.
        self._client = MeasuredClient(DeadlineClient(client, self.cfg.call_timeout))
        endpoint = await PlainEndpoint.for_client(client, self._session, self.bucket)
        if endpoint is not None:
            self._relay = S3Relay(
                endpoint,
                max_connections=self.cfg.max_pool_connections,
                connect_timeout=self.cfg.connect_timeout,
                read_timeout=self.cfg.read_timeout,
            )
            self._part_streamer = PartStreamer(
                endpoint, connect_timeout=self.cfg.connect_timeout, read_timeout=self.cfg.read_timeout
            )
        await self.writers.start(self._client)

    async def close(self) -> None:
        await self.cleanups.drain()
        await self.writers.close()  # after the aborts it waited for, before the client goes
        if self._relay is not None:
            self._relay.close()
            self._relay = None
        await self._stack.aclose()
        self._client = None

    async def check(self) -> None:
        await upstream(self.client.head_bucket(Bucket=self.bucket))

    def upload_target(self, key: str, content_type: str, *, staging_key: str | None = None) -> UploadTarget:
        """The target of one upload to ``key``; a multipart upload is assembled at
        ``staging_key``, by default a new one of this process's (s3.writers)."""
        if staging_key is None:
            staging_key = layout.writer_staging_key(self.writers.writer_id, uuid.uuid4().hex)
        checksums = self.cfg.request_checksum_calculation == "when_supported"
        return UploadTarget(
            self.client,
            self.bucket,
            key,
            content_type,
            staging_key=staging_key,
            checksums=checksums,
            streamer=self._part_streamer,
        )

    async def write(
        self,
        key: str,
        body: AsyncIterator[bytes],
        *,
        content_type: str | None,
        size: int | None = None,
    ) -> ObjectInfo:
        validate_key(key)
        self._recent.forget(key)
        upload = S3Upload(
            self.upload_target(key, content_type or "application/octet-stream"),
            size=size,
            settings=self._settings,
            budget=self.budget,
            cleanups=self.cleanups,
            writers=self.writers,
        )
        result = await upload.run(body)
        return ObjectInfo(
            key=key,
            size=result.size,
            etag=result.etag,
            last_modified=datetime.now().astimezone(),
            content_type=content_type or "application/octet-stream",
            sha256=result.sha256,
        )

    def forget_recent(self, key: str) -> None:
        """``key`` was written by other means than write() (a resumable upload)."""
        self._recent.forget(key)

    async def stat(self, key: str, *, recent: bool = False) -> ObjectInfo:
        validate_key(key)
        seen = self._recent.get(key) if recent else None
        if seen is not None:
            return seen
        self._recent.forget(key)
        head = await upstream(self.client.head_object(Bucket=self.bucket, Key=key), key=key)
        info = _info(key, head)
        self._recent.remember(info)
        return info

    async def read(
        self, key: str, start: int = 0, end: int | None = None, *, etag: str | None = None
    ) -> AsyncIterator[bytes]:
        validate_key(key)
        args: dict[str, Any] = {"Bucket": self.bucket, "Key": key}
        if start or end is not None:
            args["Range"] = f"bytes={start}-{'' if end is None else end}"
        if etag is not None:
            args["IfMatch"] = etag
        READS_BOTOCORE.inc()
        response = await upstream(self.client.get_object(**args), key=key)
        stream = response["Body"]
        try:
            async for chunk in stream.iter_chunks(READ_CHUNK):
                yield chunk
        finally:
            # Release the connection at once, even when the reader stops early.
            stream.close()

    async def open_relay(
        self, key: str, start: int, end: int | None, *, etag: str, size: int
    ) -> BodyRelay | None:
        validate_key(key)
        if self._relay is None:
            return None
        opened = await self._relay.open(key, start, end, etag=etag, size=size)
        if opened is not None:
            READS_RELAYED.inc()
        return opened

    async def presigned_read(self, key: str, *, expires: int) -> str:
        validate_key(key)
        # Signed here, no call made: the URL names the endpoint and carries a signature,
        # so it goes only to a child process of ours, never into an answer or the log.
        url: str = await self.client.generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": key}, ExpiresIn=expires
        )
        return url

    async def delete(self, key: str) -> None:
        await self.stat(key)
        self._recent.forget(key)
        await upstream(self.client.delete_object(Bucket=self.bucket, Key=key))

    async def delete_prefix(self, prefix: str) -> int:
        # Listed and deleted a thousand at a time (storage.s3.folders).
        return await delete_prefix(self.client, self.bucket, prefix, forget=self._recent.forget)

    async def list(self, prefix: str = "", limit: int = 1000, cursor: str | None = None) -> ObjectPage:
        validate_list_prefix(prefix)
        if cursor is not None:
            validate_cursor(cursor)
        objects: list[ObjectInfo] = []
        start_after = cursor
        while True:
            args: dict[str, Any] = {"Bucket": self.bucket, "Prefix": prefix, "MaxKeys": limit - len(objects)}
            if start_after:
                args["StartAfter"] = start_after
            response = await upstream(self.client.list_objects_v2(**args))
            contents = response.get("Contents", [])
            objects += [
                ObjectInfo(
                    key=item["Key"],
                    size=int(item["Size"]),
                    etag=quoted_etag(item["ETag"]),
                    last_modified=item["LastModified"],
                )
                for item in contents
                # Neither the backend's own objects (resumable uploads' state and
                # bytes) nor objects written by other means under names no key can
                # have: they could not be read through the proxy either.
                if is_valid_key(item["Key"])
            ]
            more = bool(response.get("IsTruncated")) and bool(contents)
            # Objects were left out: read on until the page is full.
            if not more or len(objects) >= limit:
                break
            start_after = contents[-1]["Key"]
        return ObjectPage(objects, objects[-1].key if more and objects else None)


def _info(key: str, head: dict[str, Any]) -> ObjectInfo:
    return ObjectInfo(
        key=key,
        size=int(head["ContentLength"]),
        etag=quoted_etag(head["ETag"]),
        last_modified=head["LastModified"],
        content_type=head.get("ContentType"),
        sha256=head.get("Metadata", {}).get(SHA256_META),
    )
