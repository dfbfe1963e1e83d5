"""Turning failures of S3 calls into the storage layer's errors."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import TypeVar

import aiohttp
from botocore.exceptions import BotoCoreError, ClientError

from proxy.storage.base import ObjectNotFound, UpstreamError

T = TypeVar("T")
NOT_FOUND_CODES = {"404", "NoSuchKey", "NotFound", "PreconditionFailed", "412"}


def quoted_etag(etag: object) -> str:
    """ETags as HTTP sends them. Ceph RGW leaves the quotes off in CopyObjectResult."""
    text = str(etag)
    return text if text.startswith(('"', 'W/"')) else f'"{text}"'


def error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


async def upstream(call: Awaitable[T], *, key: str | None = None) -> T:
    """Await an S3 call. With ``key``, a missing object (or, with a precondition,
    another version of it) is ObjectNotFound; every other failure, after botocore's
    own retries, is UpstreamError."""
    try:
        return await call
    except ClientError as exc:
        if key is not None and error_code(exc) in NOT_FOUND_CODES:
            raise ObjectNotFound(key) from exc
        raise UpstreamError(f"S3 error: {error_code(exc) or exc}") from exc
    except (BotoCoreError, aiohttp.ClientError, TimeoutError) as exc:
        raise UpstreamError(f"S3 unreachable: {exc}") from exc
