"""Small JSON records written only conditionally: what tus upload states
(resumable.records) and job records (proxy.jobs.s3) are made of.

A record is created with ``If-None-Match: *`` and replaced with ``If-Match`` on the
ETag its writer last read or wrote, so it is only ever replaced by a writer that saw
the version it replaces; of two writers starting from one version, one gets
StateChanged and writes nothing. ETags are content hashes, so a record rewritten
with identical bytes matches again: harmless, since the reader's copy is then exact,
and writers that need every write told apart (leases) put a fresh nonce in each.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any, TypeVar

from botocore.exceptions import ClientError

from proxy.storage.base import ObjectNotFound
from proxy.storage.s3.errors import error_code, quoted_etag, upstream

T = TypeVar("T")

# A conditional write found another version, or none (RGW answers a missing
# object's If-Match with 412, moto with 404); AWS answers 409 to a concurrent one.
_CONFLICT_CODES = {"PreconditionFailed", "412", "ConditionalRequestConflict", "NoSuchKey", "404"}


class StateChanged(Exception):
    """A conditional write found a version other than the expected one."""


async def conditional(call: Awaitable[T]) -> T:
    """Await a conditional S3 write; StateChanged if its condition failed."""
    try:
        return await call
    except ClientError as exc:
        if error_code(exc) in _CONFLICT_CODES:
            raise StateChanged from exc
        raise


async def read_record(client: Any, bucket: str, key: str) -> tuple[bytes, str, dict[str, Any]] | None:
    """The record's bytes, its quoted ETag and the GetObject answer (whose dates time
    a lease); None if there is none."""
    try:
        response = await upstream(client.get_object(Bucket=bucket, Key=key), key=key)
    except ObjectNotFound:
        return None
    stream = response["Body"]
    try:
        data: bytes = await upstream(stream.read())  # a record: a few hundred bytes
    finally:
        stream.close()
    return data, quoted_etag(response["ETag"]), response


async def write_record(client: Any, bucket: str, key: str, body: bytes, *, if_match: str | None) -> str:
    """Write ``body`` at ``key`` if the stored record is still ``if_match`` (None: if
    there is none); its new quoted ETag, or StateChanged."""
    args: dict[str, Any] = {"Bucket": bucket, "Key": key, "Body": body, "ContentType": "application/json"}
    if if_match is None:
        args["IfNoneMatch"] = "*"
    else:
        args["IfMatch"] = if_match.strip('"')  # RGW 16.2 only matches the bare ETag
    try:
        response = await upstream(conditional(client.put_object(**args)))
    except StateChanged:
        # botocore retries a write whose answer was lost, and the retry fails the
        # condition that the first attempt met: if what is stored is byte for byte
        # what we sent, it is ours.
        stored = await read_record(client, bucket, key)
        if stored is None or stored[0] != body:
            raise
        return stored[1]
    return quoted_etag(response["ETag"])
