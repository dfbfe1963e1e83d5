"""Parts that go to S3 while the PATCH body that fills them still arrives
(proxy/storage/s3/part_stream.py): on moto and on the real RGW, which checks every
chunk's signature; a part cut short is dropped and its bytes kept; a part that cannot
be streamed is sent whole through botocore."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from typing import Any

import pytest

from proxy.metrics.definitions import REGISTRY
from proxy.storage.resumable import UploadBody, UploadState
from proxy.storage.s3.objects import S3Storage
from proxy.storage.s3.part_stream import USER_AGENT
from proxy.storage.s3.resumable.store import S3ResumableStore
from tests.conftest import S3Endpoint, S3View, make_bucket, new_upload_state
from tests.net import TcpTap
from tests.storage.s3.resumable.support import agen, chunks, cut_off_body, finish, payload, store_factory

MiB = 1024 * 1024
PATCH = 8 * MiB  # one part of its own: 6 MiB and the 2 MiB behind it (plan.part_target)


def parts_sent(path: str) -> float:
    return REGISTRY.get_sample_value("stream_proxy_s3_parts_total", {"path": path}) or 0


@pytest.fixture(params=["moto", pytest.param("rgw", marks=pytest.mark.real_s3)])
def endpoint(request: pytest.FixtureRequest) -> S3Endpoint:
    server: S3Endpoint = request.getfixturevalue("moto_endpoint" if request.param == "moto" else "real_s3")
    return server


@pytest.fixture
def bucket(endpoint: S3Endpoint) -> Iterator[str]:
    yield from make_bucket(endpoint)


@pytest.fixture
async def tap(endpoint: S3Endpoint) -> AsyncIterator[TcpTap]:
    tap = TcpTap(endpoint.url)
    await tap.start()
    yield tap
    await tap.close()


@pytest.fixture
async def store(tap: TcpTap, endpoint: S3Endpoint, bucket: str, opened: list[S3Storage]) -> S3ResumableStore:
    made: S3ResumableStore = await store_factory(opened, bucket)(
        replace(endpoint, url=tap.url), part_size=6 * MiB
    )
    return made


async def patch(
    store: S3ResumableStore, upload_id: str, body: AsyncIterator[bytes], size: int
) -> UploadState:
    """One PATCH with its length announced, as a client's Content-Length."""
    async with store.lock(upload_id) as state:
        return await store.append(state, UploadBody(body, state=state, expected=size))


async def check_finished(store: S3ResumableStore, view: S3View, state: UploadState, data: bytes) -> None:
    """Finish the upload: the object holds ``data``, and no buffer is left."""
    await finish(store, state.id)
    assert view.get(state.key) == data
    assert store.storage.budget.in_use == 0


def streamed_bytes(tap: TcpTap) -> int:
    return max((len(c.sent) for c in tap.connections if USER_AGENT.encode() in c.sent), default=0)


async def test_a_part_is_on_its_way_before_its_patch_body_has_ended(
    store: S3ResumableStore, tap: TcpTap, endpoint: S3Endpoint, bucket: str
) -> None:
    data = payload(3 * PATCH)
    state = await store.create(new_upload_state(len(data)))
    rest = asyncio.Event()

    async def held_back() -> AsyncIterator[bytes]:
        for chunk in chunks(data[: PATCH // 2]):
            yield chunk
        await rest.wait()
        for chunk in chunks(data[PATCH // 2 : PATCH]):
            yield chunk

    streamed, whole = parts_sent("streamed"), parts_sent("whole")
    first = asyncio.create_task(patch(store, state.id, held_back(), PATCH))
    async with asyncio.timeout(20):
        while streamed_bytes(tap) < PATCH // 2:  # half the part is at S3 already
            await asyncio.sleep(0.02)
    assert not first.done()
    rest.set()
    await first
    for start in (PATCH, 2 * PATCH):
        await patch(store, state.id, agen(chunks(data[start : start + PATCH])), PATCH)
    assert (parts_sent("streamed") - streamed, parts_sent("whole") - whole) == (3, 0)
    await check_finished(store, S3View(endpoint, bucket), state, data)


async def test_a_patch_cut_short_keeps_its_bytes_and_drops_the_part_it_began(
    store: S3ResumableStore, endpoint: S3Endpoint, bucket: str
) -> None:
    data = payload(2 * PATCH)
    state = await store.create(new_upload_state(len(data)))
    cut = PATCH - MiB - 5
    whole = parts_sent("whole")
    with pytest.raises(ConnectionResetError):
        await patch(store, state.id, cut_off_body(data, cut, ConnectionResetError()), PATCH)
    kept = await store.get(state.id)
    # The streamed part could never be whole: dropped, and the bytes kept sent again as
    # a part of their own (at least 5 MiB: no tail).
    assert kept.offset == cut and [size for _, _, size in kept.backend["parts"]] == [cut]
    assert "tail" not in kept.backend and parts_sent("whole") - whole == 1
    await patch(store, state.id, agen(chunks(data[cut:])), len(data) - cut)
    await check_finished(store, S3View(endpoint, bucket), state, data)


async def test_a_part_that_cannot_be_streamed_is_sent_whole(
    interposer: Any, make_store: Any, view: S3View
) -> None:
    layer, endpoint = interposer
    store = await make_store(endpoint, part_size=6 * MiB)
    # The streamed request fails (aws-chunked bodies carry their decoded length).
    layer.fault = lambda seen: 500 if seen.operation == "UploadPart" and seen.decoded_length else None
    data = payload(2 * PATCH)
    state = await store.create(new_upload_state(len(data)))
    whole = parts_sent("whole")
    for start in (0, PATCH):
        await patch(store, state.id, agen(chunks(data[start : start + PATCH])), PATCH)
    assert parts_sent("whole") - whole == 2
    tried = [s for s in layer.seen if s.operation == "UploadPart"]
    assert [bool(s.decoded_length) for s in tried] == [True, False, True, False]
    await finish(store, state.id)
    assert view.get(state.key) == data
