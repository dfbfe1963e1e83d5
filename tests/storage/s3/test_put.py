"""The S3 upload path through a recording, fault-injecting layer in front of moto."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest

from proxy.storage import layout
from proxy.storage.base import UpstreamError
from proxy.storage.s3.objects import S3Storage
from proxy.storage.s3.publish import publish
from tests.conftest import MiB, S3Endpoint, S3View, s3_config

PART = 5 * MiB


def generated(total: int, chunk: int = 256 * 1024) -> Iterator[bytes]:
    block = bytes(range(256)) * (chunk // 256)
    sent = 0
    while sent < total:
        n = min(chunk, total - sent)
        yield block[:n]
        sent += n


async def agen(it: Iterator[bytes]) -> AsyncIterator[bytes]:
    for chunk in it:
        yield chunk


def sha256_of(it: Iterator[bytes]) -> str:
    h = hashlib.sha256()
    for chunk in it:
        h.update(chunk)
    return h.hexdigest()


async def test_small_body_is_one_put_object(make_storage: Any, interposer: Any, view: S3View) -> None:
    layer, _ = interposer
    storage = await make_storage()
    info = await storage.write("small", agen(generated(PART)), content_type="video/mp4")
    assert info.size == PART
    assert "CreateMultipartUpload" not in layer.operations()
    assert layer.operations().count("PUT object") == 1
    assert view.metadata("small")["sha256"] == sha256_of(generated(PART))
    # The part buffer's reservation is given back: it once leaked 6 MiB per small upload.
    assert storage.budget.in_use == 0


async def test_parts_have_content_length_in_order_and_bounded_concurrency(
    make_storage: Any, interposer: Any, view: S3View
) -> None:
    layer, _ = interposer
    storage = await make_storage()
    total = 9 * PART + 12345
    info = await storage.write("big", agen(generated(total)), content_type=None)
    parts = [s for s in layer.seen if s.operation == "UploadPart"]
    assert [
        int(s.query["partNumber"]) for s in sorted(parts, key=lambda s: int(s.query["partNumber"]))
    ] == list(range(1, 11))
    for part in parts:
        assert part.transfer_encoding is None
        assert part.content_length is not None and int(part.content_length) == part.body_size
    assert sorted(p.body_size for p in parts) == sorted([PART] * 9 + [12345])
    assert 1 < layer.max_parts_in_flight <= 3
    assert info.sha256 == sha256_of(generated(total)) == view.metadata("big")["sha256"]
    assert info.etag == view.client.head_object(Bucket=view.bucket, Key="big")["ETag"]
    assert view.leftovers() == []


async def test_known_size_picks_part_size_up_front(make_storage: Any, interposer: Any) -> None:
    layer, _ = interposer
    storage = await make_storage()
    total = 3 * PART + 1
    await storage.write("sized", agen(generated(total)), content_type=None, size=total)
    assert [s.body_size for s in layer.seen if s.operation == "UploadPart"].count(PART) == 3


@pytest.mark.parametrize("failing_part", [1, 3])
async def test_s3_failure_aborts_multipart_upload(
    make_storage: Any, interposer: Any, view: S3View, failing_part: int
) -> None:
    layer, _ = interposer
    layer.fault = lambda s: 500 if s.query.get("partNumber") == str(failing_part) else None
    storage = await make_storage()
    with pytest.raises(UpstreamError):
        await storage.write("doomed", agen(generated(6 * PART)), content_type=None)
    assert "AbortMultipartUpload" in layer.operations()
    assert view.leftovers() == []
    assert view.keys() == []


async def test_failed_complete_aborts(make_storage: Any, interposer: Any, view: S3View) -> None:
    layer, _ = interposer
    layer.fault = lambda s: 503 if s.operation == "CompleteMultipartUpload" else None
    storage = await make_storage()
    with pytest.raises(UpstreamError):
        await storage.write("doomed", agen(generated(2 * PART + 1)), content_type=None)
    assert view.leftovers() == [] and view.keys() == []
    assert storage.budget.in_use == 0


async def test_failed_create_releases_the_budget(make_storage: Any, interposer: Any, view: S3View) -> None:
    layer, _ = interposer
    layer.fault = lambda s: 503 if s.operation == "CreateMultipartUpload" else None
    storage = await make_storage()
    with pytest.raises(UpstreamError):
        await storage.write("doomed", agen(generated(2 * PART + 1)), content_type=None)
    assert view.leftovers() == [] and view.keys() == []
    assert storage.budget.in_use == 0


async def test_body_error_aborts(make_storage: Any, interposer: Any, view: S3View) -> None:
    storage = await make_storage()

    async def broken() -> AsyncIterator[bytes]:
        for i, chunk in enumerate(generated(10 * PART)):
            if i == 100:
                raise ConnectionResetError("client went away")
            yield chunk

    with pytest.raises(ConnectionResetError):
        await storage.write("cut", broken(), content_type=None)
    assert view.leftovers() == [] and view.keys() == []
    assert storage.budget.in_use == 0


async def test_budget_pushes_back_instead_of_growing(make_storage: Any, view: S3View) -> None:
    import asyncio

    storage = await make_storage(memory_budget=2 * PART)
    total = 4 * PART + 1
    infos = await asyncio.gather(
        *(storage.write(f"k{i}", agen(generated(total)), content_type=None) for i in range(3))
    )
    assert storage.budget.peak <= 2 * PART
    assert storage.budget.in_use == 0
    assert {i.sha256 for i in infos} == {sha256_of(generated(total))}
    assert view.keys() == ["k0", "k1", "k2"]


@pytest.mark.slow
async def test_buffered_memory_is_bounded_for_a_1_gib_upload(
    moto_endpoint: S3Endpoint, moto_bucket: str, view: S3View
) -> None:
    # Straight to moto (no recording layer): 1 GiB from a generator.
    cfg = s3_config(moto_endpoint, moto_bucket, part_size=8 * MiB, max_concurrency=4)
    storage = S3Storage(cfg)
    await storage.start()
    try:
        total = 1024 * MiB
        info = await storage.write("huge", agen(generated(total, MiB)), content_type=None)
    finally:
        await storage.close()
    assert info.size == total
    assert info.sha256 == sha256_of(generated(total, MiB))
    # Part buffers: at most max_concurrency in flight plus the one being filled.
    assert storage.budget.peak <= 8 * MiB * (4 + 1)
    assert view.metadata("huge")["size"] == total


async def test_http_client_gets_502_and_upload_is_aborted(
    interposer: Any, moto_bucket: str, view: S3View, proxy_client: Any
) -> None:
    from proxy.config import Config, ServerConfig, StorageConfig

    layer, endpoint = interposer
    layer.fault = lambda s: 500 if s.query.get("partNumber") == "2" else None
    storage = StorageConfig(backend="s3", s3=s3_config(endpoint, moto_bucket, part_size=PART))
    client = await proxy_client(Config(ServerConfig(), storage))
    response = await client.put("/files/v.mp4", data=b"\1" * (4 * PART))
    body = await response.json()
    assert response.status == 502, body
    assert body["error"] == "upstream_error"
    assert "AbortMultipartUpload" in layer.operations()
    assert view.leftovers() == [] and view.keys() == []


async def test_close_waits_for_aborts_of_cancelled_uploads(
    make_storage: Any, interposer: Any, view: S3View
) -> None:
    import asyncio

    layer, _ = interposer
    layer.delays["AbortMultipartUpload"] = 1.0
    storage = await make_storage()
    started = asyncio.Event()

    async def endless() -> AsyncIterator[bytes]:
        for chunk in generated(1024 * MiB):
            if len([s for s in layer.seen if s.operation == "UploadPart"]) >= 2:
                started.set()
            yield chunk

    task = asyncio.create_task(storage.write("shutdown", endless(), content_type=None))
    await asyncio.wait_for(started.wait(), 10)
    task.cancel()  # what aiohttp does to handlers at shutdown...
    await asyncio.sleep(0.2)
    task.cancel()  # ...and again while the abort is under way
    with pytest.raises(asyncio.CancelledError):
        await task
    await storage.close()  # must not release the client before the abort is done
    assert "AbortMultipartUpload" in layer.operations()
    assert view.leftovers() == [] and view.keys() == []


# -- publishing: the multipart upload is assembled at a staging key, then copied ------


def staging_objects(view: S3View) -> list[str]:
    return [key for key in view.all_keys() if layout.WRITER_STAGING in key]


def publishes(key: str) -> Callable[[Any], bool]:
    """Whether an interposed request is the CopyObject that publishes ``key``."""
    return lambda s: s.method == "PUT" and "partNumber" not in s.query and s.path.endswith("/" + key)


@pytest.mark.parametrize("lost", ["complete", "copy"])
async def test_a_lost_answer_after_the_object_was_made_still_answers_the_write(
    make_storage: Any, interposer: Any, view: S3View, lost: str
) -> None:
    """S3 did the work but its answer never came (every attempt's answer lost): the
    upload recognises what it made, answers success and leaves nothing behind."""
    layer, _ = interposer
    if lost == "complete":
        layer.lost_answer = lambda s: 503 if s.operation == "CompleteMultipartUpload" else None
    else:
        layer.lost_answer = lambda s: 503 if publishes("kept")(s) else None
    storage = await make_storage()
    total = 2 * PART + 1
    info = await storage.write("kept", agen(generated(total)), content_type="video/mp4")
    digest = sha256_of(generated(total))
    assert (info.size, info.sha256) == (total, digest)
    assert view.get("kept") == b"".join(generated(total))
    assert view.metadata("kept")["sha256"] == digest
    assert info.etag == view.client.head_object(Bucket=view.bucket, Key="kept")["ETag"]
    assert view.leftovers() == [] and staging_objects(view) == []


async def test_a_failed_publish_leaves_the_key_as_it_was(
    make_storage: Any, interposer: Any, view: S3View
) -> None:
    layer, _ = interposer
    view.client.put_object(Bucket=view.bucket, Key="held", Body=b"the old version")
    layer.fault = lambda s: 503 if publishes("held")(s) else None
    storage = await make_storage()
    with pytest.raises(UpstreamError):
        await storage.write("held", agen(generated(2 * PART + 1)), content_type=None)
    assert view.get("held") == b"the old version"
    assert view.leftovers() == [] and staging_objects(view) == []
    assert storage.budget.in_use == 0


async def test_an_object_over_the_copy_limit_is_published_in_ranges(
    make_storage: Any, interposer: Any, view: S3View
) -> None:
    layer, _ = interposer
    storage = await make_storage()
    target = storage.upload_target("large", "video/mp4")
    data = b"".join(generated(2 * PART + 12345))
    view.client.put_object(Bucket=view.bucket, Key=target.staging_key, Body=data)
    digest = hashlib.sha256(data).hexdigest()

    etag = await publish(
        target, len(data), digest, writers=storage.writers, max_concurrency=2, copy_limit=PART
    )

    copies = [s for s in layer.seen if s.operation == "UploadPart" and s.path.endswith("/large")]
    assert len(copies) == 3  # 5 MiB, 5 MiB and the rest, copied by S3
    head = view.client.head_object(Bucket=view.bucket, Key="large")
    assert (head["ETag"], head["ContentType"], head["Metadata"]["sha256"]) == (etag, "video/mp4", digest)
    assert view.get("large") == data
    assert view.leftovers() == [] and staging_objects(view) == []
    assert view.internal_keys() == []  # the copy's record went with it
