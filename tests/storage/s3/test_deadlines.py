"""storage.s3.call_timeout: S3 calls that move no object's bytes fail in seconds when
S3 stalls, retries included; calls that move bytes keep read_timeout alone."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from proxy.storage.base import UpstreamError
from proxy.storage.s3.deadlines import BOUNDED_CALLS, DeadlineClient
from tests.conftest import MiB, S3View

CALL_TIMEOUT = 1.0


async def chunks(data: bytes, size: int = 256 * 1024) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


@pytest.mark.parametrize(
    ("operation", "call"),
    [
        ("HEAD object", lambda storage: storage.stat("stalled")),
        ("GET bucket", lambda storage: storage.list("")),
        ("DELETE object", lambda storage: storage.delete("stalled")),
    ],
)
async def test_a_stalled_call_without_object_bytes_fails_within_call_timeout(
    make_storage: Any, interposer: Any, view: S3View, operation: str, call: Any
) -> None:
    layer, _ = interposer
    view.client.put_object(Bucket=view.bucket, Key="stalled", Body=b"kept")
    storage = await make_storage(call_timeout=CALL_TIMEOUT, max_attempts=3)
    layer.delays[operation] = 30  # S3 takes the request and says nothing
    started = time.monotonic()
    with pytest.raises(UpstreamError):
        await call(storage)
    # All attempts together, not read_timeout per attempt.
    assert time.monotonic() - started < CALL_TIMEOUT + 3
    assert view.get("stalled") == b"kept"


async def test_a_stalled_create_multipart_fails_and_leaves_nothing(
    make_storage: Any, interposer: Any, view: S3View
) -> None:
    layer, _ = interposer
    storage = await make_storage(call_timeout=CALL_TIMEOUT)
    layer.delays["CreateMultipartUpload"] = 30
    started = time.monotonic()
    with pytest.raises(UpstreamError):
        await storage.write("big", chunks(bytes(11 * MiB)), content_type=None)
    assert time.monotonic() - started < CALL_TIMEOUT + 3
    assert view.keys() == []
    assert storage.budget.in_use == 0


async def test_calls_that_move_bytes_may_take_longer_than_call_timeout(
    make_storage: Any, interposer: Any, view: S3View
) -> None:
    layer, _ = interposer
    storage = await make_storage(call_timeout=CALL_TIMEOUT)
    layer.delays["UploadPart"] = 2 * CALL_TIMEOUT
    data = bytes(range(256)) * (11 * MiB // 256)
    info = await storage.write("slow", chunks(data), content_type=None)
    assert info.size == len(data)
    assert view.get("slow") == data


def test_only_calls_that_move_no_object_bytes_are_bounded() -> None:
    class Client:
        meta = "meta"

        async def get_object(self) -> str:
            return "unbounded"

    wrapped = DeadlineClient(Client(), 1.0)
    assert wrapped.meta == "meta"
    assert wrapped.get_object.__func__ is Client.get_object  # as it is
    assert not {"get_object", "put_object", "upload_part", "copy_object"} & BOUNDED_CALLS
    assert "complete_multipart_upload" not in BOUNDED_CALLS  # slow for large objects
