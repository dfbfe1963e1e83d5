"""Which requests reach S3 for a download, with which Range and If-Match: a recording
layer between the proxy and moto sees each of them."""

from __future__ import annotations

import pytest

from tests.web.downloads_support import (
    S3Recorded,
    module_loop,
    parse_byteranges,
    raw,
)


@module_loop
async def test_s3_full_get_is_one_get_object_without_range(s3_recorded: S3Recorded) -> None:
    r = await raw(s3_recorded.client, "GET", "/files/rec.mp4")
    assert r.status == 200 and r.body == s3_recorded.data
    [get] = s3_recorded.get_objects()
    assert get.range is None, get
    assert s3_recorded.head_objects() <= 1


@module_loop
@pytest.mark.parametrize(
    ("header", "sent"),
    [
        ("bytes=0-", "bytes=0-999"),
        ("bytes=0-1", "bytes=0-1"),
        ("bytes=10-19", "bytes=10-19"),
        ("bytes=990-5000", "bytes=990-999"),
        ("bytes=-10", "bytes=990-999"),
        ("bytes=-5000", "bytes=0-999"),
        ("bytes=999-", "bytes=999-999"),
        ("bytes=0-1,1000-", "bytes=0-1"),
    ],
)
async def test_s3_single_range_is_one_ranged_get_object(
    s3_recorded: S3Recorded, header: str, sent: str
) -> None:
    r = await raw(s3_recorded.client, "GET", "/files/rec.mp4", {"Range": header})
    assert r.status == 206
    start, end = (int(x) for x in sent.removeprefix("bytes=").split("-"))
    assert r.body == s3_recorded.data[start : end + 1]
    [get] = s3_recorded.get_objects()
    assert get.range == sent
    assert get.if_match == s3_recorded.etag
    assert s3_recorded.head_objects() <= 1


@module_loop
async def test_s3_multiple_ranges_are_one_get_object_each(s3_recorded: S3Recorded) -> None:
    r = await raw(s3_recorded.client, "GET", "/files/rec.mp4", {"Range": "bytes=500-509,0-9,-5,0-9"})
    assert r.status == 206
    data = s3_recorded.data
    assert [part for _, part in parse_byteranges(r)] == [data[500:510], data[0:10], data[995:], data[0:10]]
    gets = s3_recorded.get_objects()
    assert [c.range for c in gets] == ["bytes=500-509", "bytes=0-9", "bytes=995-999", "bytes=0-9"]
    assert [c.if_match for c in gets] == [s3_recorded.etag] * 4
    assert s3_recorded.head_objects() <= 1


@module_loop
@pytest.mark.parametrize(
    ("method", "headers", "status"),
    [
        ("HEAD", {}, 200),
        ("HEAD", {"Range": "bytes=0-1"}, 206),
        ("HEAD", {"Range": "bytes=0-1,4-5"}, 206),
        ("GET", {"If-None-Match": "{etag}"}, 304),
        ("GET", {"If-Match": '"other"'}, 412),
        ("GET", {"Range": "bytes=1000-"}, 416),
    ],
)
async def test_s3_head_and_refusals_only_head_the_object(
    s3_recorded: S3Recorded, method: str, headers: dict[str, str], status: int
) -> None:
    sent = {k: v.format(etag=s3_recorded.etag) for k, v in headers.items()}
    r = await raw(s3_recorded.client, method, "/files/rec.mp4", sent)
    assert r.status == status
    assert s3_recorded.get_objects() == []
    operations = [c.operation for c in s3_recorded.calls()]
    # HEAD always asks S3; a GET may answer from validators it saw a moment ago.
    assert operations == ["HeadObject"] if method == "HEAD" else operations in ([], ["HeadObject"])
