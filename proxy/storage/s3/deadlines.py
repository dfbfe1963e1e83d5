"""A deadline on the S3 calls that move no object's bytes.

botocore's read_timeout bounds each wait for a byte of an answer, and is long (a
CompleteMultipartUpload or a copy of gigabytes may take minutes); with its retries a
stalled S3 could hold a HeadObject, and the request waiting on it, for an hour.
Calls that carry no object's bytes need seconds, so they get a deadline for the
whole call, retries included (``storage.s3.call_timeout``); past it the call fails
with TimeoutError, which errors.upstream turns into UpstreamError (a 502).

Calls that move bytes (parts, objects, copies, Complete) keep read_timeout alone:
their time grows with their size.
"""

from __future__ import annotations

import asyncio
from typing import Any

# The client's methods that move no object's bytes and are bounded.
BOUNDED_CALLS = frozenset(
    {
        "head_object",
        "head_bucket",
        "list_objects_v2",
        "list_multipart_uploads",
        "list_parts",
        "delete_object",
        "delete_objects",
        "create_multipart_upload",
        "abort_multipart_upload",
    }
)


class DeadlineClient:
    """An aiobotocore S3 client whose BOUNDED_CALLS each take at most ``seconds``;
    everything else is the client's own."""

    def __init__(self, client: Any, seconds: float) -> None:
        self._client = client
        self._seconds = seconds

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._client, name)
        if name not in BOUNDED_CALLS:
            return method

        async def bounded(*args: Any, **kwargs: Any) -> Any:
            async with asyncio.timeout(self._seconds):
                return await method(*args, **kwargs)

        return bounded
