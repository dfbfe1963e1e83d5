"""The objects a resumable upload keeps in the bucket (storage.layout): its state,
written only conditionally, and its tails, the bytes that do not yet fill a part.

Every write of the state object is conditional (s3.conditional), and every write
made under a lease carries a fresh nonce, so no two of those are ever identical.
Removing the state object is unconditional (S3 servers such as RGW 16.2 do not support conditional
deletes), so it is done only under the lease.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator
from typing import Any

from proxy.storage import layout
from proxy.storage.base import ObjectNotFound, StorageError, UpstreamError
from proxy.storage.resumable import UploadNotFound, UploadState
from proxy.storage.s3.conditional import StateChanged as StateChanged
from proxy.storage.s3.conditional import read_record, write_record
from proxy.storage.s3.errors import upstream
from proxy.storage.s3.objects import READ_CHUNK, S3Storage
from proxy.storage.s3.resumable.plan import PartLayout
from proxy.streaming.part_buffer import PartBuffer

log = logging.getLogger(__name__)


class UploadRecords:
    def __init__(self, storage: S3Storage) -> None:
        self._storage = storage

    @property
    def _client(self) -> Any:
        return self._storage.client

    @property
    def _bucket(self) -> str:
        return self._storage.bucket

    # State

    async def read_state(self, upload_id: str) -> tuple[UploadState, dict[str, Any]]:
        """The stored state, with its ETag as ``version``, and the GetObject answer
        (its dates time a lease); UploadNotFound if there is none."""
        found = await read_record(self._client, self._bucket, layout.upload_state_key(upload_id))
        if found is None:
            raise UploadNotFound(upload_id)
        data, etag, response = found
        return UploadState.from_json(data, version=etag), response

    async def put_state(self, state: UploadState, *, if_match: str | None) -> str:
        """Write ``state`` if the stored one is still ``if_match`` (None: if there is
        none); returns the new ETag, or raises StateChanged."""
        key = layout.upload_state_key(state.id)
        return await write_record(self._client, self._bucket, key, state.to_json(), if_match=if_match)

    async def delete_state(self, upload_id: str) -> None:
        await upstream(
            self._client.delete_object(Bucket=self._bucket, Key=layout.upload_state_key(upload_id))
        )

    # Tails

    async def read_tail(self, state: UploadState, parts: PartLayout, buf: PartBuffer) -> None:
        """Add the bytes of the tail ``parts`` names, if any, to ``buf``."""
        if parts.tail is None:
            return
        key = layout.upload_tail_key(state.id, parts.tail)
        try:
            response = await upstream(self._client.get_object(Bucket=self._bucket, Key=key), key=key)
        except ObjectNotFound:
            raise UpstreamError(f"upload {state.id}: its stored bytes are missing ({key})") from None
        await upstream(_read_into(response["Body"], buf))
        expected = state.offset - parts.in_parts
        if buf.size != expected:
            raise UpstreamError(f"upload {state.id}: {key} holds {buf.size} bytes, not {expected}")

    @staticmethod
    def new_tail() -> str:
        """A fresh tail token; named before the PUT, so that a tail whose answer was
        lost can still be removed."""
        return uuid.uuid4().hex

    async def put_tail(self, upload_id: str, token: str, data: PartBuffer) -> None:
        key = layout.upload_tail_key(upload_id, token)
        target = self._storage.upload_target(key, "application/octet-stream", staging_key=key)
        body = await data.body()
        await upstream(
            self._client.put_object(
                Bucket=self._bucket, Key=key, Body=body, ContentLength=data.size, **target.checksum_args(data)
            )
        )

    async def delete_tail(self, upload_id: str, token: str) -> None:
        """Delete a tail that nothing refers to any more; one left behind goes when
        its upload is terminated or expires."""
        key = layout.upload_tail_key(upload_id, token)
        try:
            await upstream(self._client.delete_object(Bucket=self._bucket, Key=key))
        except StorageError as exc:
            log.warning("could not delete %s: %s", key, exc)

    # The whole upload

    async def delete_all_but_state(self, upload_id: str) -> None:
        """Every tail, also those of appends that died before saving."""
        state_key = layout.upload_state_key(upload_id)
        for key in await self._keys(layout.upload_prefix(upload_id)):
            if key != state_key:
                await upstream(self._client.delete_object(Bucket=self._bucket, Key=key))

    async def upload_ids(self) -> list[str]:
        return [
            layout.upload_id_of(entry["Prefix"])
            async for page in self._listing(layout.UPLOADS, Delimiter="/")
            for entry in page.get("CommonPrefixes", [])
        ]

    async def _listing(self, prefix: str, **args: Any) -> AsyncIterator[dict[str, Any]]:
        token: str | None = None
        while True:
            page_args = {"Bucket": self._bucket, "Prefix": prefix, **args}
            if token is not None:
                page_args["ContinuationToken"] = token
            page: dict[str, Any] = await upstream(self._client.list_objects_v2(**page_args))
            yield page
            if not page.get("IsTruncated"):
                return
            token = page["NextContinuationToken"]

    async def _keys(self, prefix: str) -> list[str]:
        return [item["Key"] async for page in self._listing(prefix) for item in page.get("Contents", [])]


async def _read_into(stream: Any, buf: PartBuffer) -> None:
    try:
        async for chunk in stream.iter_chunks(READ_CHUNK):
            await buf.add(chunk)
    finally:
        stream.close()
