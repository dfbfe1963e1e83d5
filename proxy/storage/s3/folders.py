"""S3 backend: deleting a folder, every object under a key prefix.

One page of ListObjectsV2 under the prefix (at most 1,000 keys, S3's page), then one
DeleteObjects of that page's keys (at most 1,000, S3's limit for one call) in Quiet
mode, so its answer names only the keys it failed on; then the next page, listed
after the last key seen. Two calls per thousand objects, and never more than a page
of keys held. The backend's own objects (``.stream-proxy/``, which an empty prefix
lists) and keys that can be no object key are never sent to DeleteObjects: the proxy
could not have written them, and they are no object it shows.

A key DeleteObjects refuses (AccessDenied, a server's InternalError) does not stop
the walk: every other key is still deleted, and DeleteIncomplete then names how many
went. A call that fails (after botocore's retries) stops it there with
DeleteIncomplete too. An object written after its page was listed may remain.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from proxy.rules.keys import is_valid_key, validate_prefix
from proxy.storage.base import DeleteIncomplete, UpstreamError
from proxy.storage.s3.errors import upstream

# S3's most for one DeleteObjects, and a ListObjectsV2 page.
BATCH = 1000


async def delete_prefix(client: Any, bucket: str, prefix: str, *, forget: Callable[[str], None]) -> int:
    """Delete every object under the folder ``prefix`` in ``bucket``; the number
    deleted. ``forget(key)`` is called for each key before it is deleted."""
    validate_prefix(prefix)
    deleted = 0
    failed: list[str] = []
    start_after: str | None = None
    try:
        while True:
            args: dict[str, Any] = {"Bucket": bucket, "Prefix": prefix, "MaxKeys": BATCH}
            if start_after is not None:
                args["StartAfter"] = start_after
            page = await upstream(client.list_objects_v2(**args))
            listed = [item["Key"] for item in page.get("Contents", [])]
            keys = [key for key in listed if is_valid_key(key)]
            if keys:
                for key in keys:
                    forget(key)
                errors = await _delete_batch(client, bucket, keys)
                failed += errors
                deleted += len(keys) - len(errors)
            if not (page.get("IsTruncated") and listed):
                break
            start_after = listed[-1]
    except UpstreamError as exc:
        raise DeleteIncomplete(f"{exc} after deleting {deleted} objects", deleted=deleted) from exc
    if failed:
        raise DeleteIncomplete(f"DeleteObjects refused {len(failed)} keys: {failed[0]}", deleted=deleted)
    return deleted


async def _delete_batch(client: Any, bucket: str, keys: list[str]) -> list[str]:
    """Delete ``keys`` in one call; the errors it answered for some of them, as
    ``Code`` text (never the key: it goes to the log)."""
    response = await upstream(
        client.delete_objects(
            Bucket=bucket, Delete={"Objects": [{"Key": key} for key in keys], "Quiet": True}
        )
    )
    return [str(error.get("Code") or "error") for error in response.get("Errors", [])]
