"""Conditional GET and HEAD /files/{key} (RFC 9110 §13.2.2) on both backends, checked
on the wire, against the shared read-only proxy of each backend."""

from __future__ import annotations

from datetime import timedelta

import pytest

from tests.web.downloads_support import (
    OBJ,
    N,
    Shared,
    assert_framed,
    assert_json_error,
    http_date,
    module_loop,
    parse_date,
    raw,
)

# {etag} is the object's ETag, {lm} its Last-Modified, {earlier} and {later} a second
# before and after. Range 10-19 gives bytes 10 to 19 when honoured.
PRECONDITION_CASES: list[tuple[dict[str, str], int]] = [
    ({"If-Match": "{etag}"}, 200),
    ({"If-Match": "*"}, 200),
    ({"If-Match": '"other", {etag}'}, 200),
    ({"If-Match": '"other"'}, 412),
    ({"If-Match": "W/{etag}"}, 412),  # strong comparison
    ({"If-Unmodified-Since": "{lm}"}, 200),
    ({"If-Unmodified-Since": "{later}"}, 200),
    ({"If-Unmodified-Since": "{earlier}"}, 412),
    ({"If-Unmodified-Since": "not a date"}, 200),
    ({"If-Match": "{etag}", "If-Unmodified-Since": "{earlier}"}, 200),  # ignored with If-Match
    ({"If-None-Match": "{etag}"}, 304),
    ({"If-None-Match": "W/{etag}"}, 304),  # weak comparison
    ({"If-None-Match": '"a", {etag}'}, 304),
    ({"If-None-Match": "*"}, 304),
    ({"If-None-Match": '"other"'}, 200),
    ({"If-Modified-Since": "{lm}"}, 304),
    ({"If-Modified-Since": "{earlier}"}, 200),
    ({"If-Modified-Since": "not a date"}, 200),
    ({"If-None-Match": '"other"', "If-Modified-Since": "{lm}"}, 200),  # ignored with If-None-Match
    ({"If-Match": '"other"', "If-None-Match": "{etag}"}, 412),  # the 412 conditions come first
    ({"If-Unmodified-Since": "{earlier}", "If-Modified-Since": "{lm}"}, 412),
    ({"If-Match": "{etag}", "If-None-Match": "{etag}"}, 304),
    ({"If-None-Match": "{etag}", "Range": "bytes=10-19"}, 304),  # preconditions before Range
    ({"If-Modified-Since": "{lm}", "Range": "bytes=10-19"}, 304),
    ({"If-Match": '"other"', "Range": "bytes=10-19"}, 412),
    ({"If-Match": '"other"', "Range": "bytes=5000-"}, 412),
    ({"If-Match": "{etag}", "Range": "bytes=10-19"}, 206),
    ({"If-None-Match": '"other"', "Range": "bytes=10-19"}, 206),
    ({"If-Range": "{etag}", "Range": "bytes=10-19"}, 206),
    ({"If-Range": "{lm}", "Range": "bytes=10-19"}, 206),
    ({"If-Range": '"other"', "Range": "bytes=10-19"}, 200),
    ({"If-Range": "W/{etag}", "Range": "bytes=10-19"}, 200),  # weak tags never match
    ({"If-Range": "{earlier}", "Range": "bytes=10-19"}, 200),
    ({"If-Range": "{later}", "Range": "bytes=10-19"}, 200),
    ({"If-Range": "garbage", "Range": "bytes=10-19"}, 200),
    ({"If-Range": '"other"', "Range": "bytes=5000-"}, 200),  # the whole object, not 416
    ({"If-Range": "{etag}", "Range": "bytes=5000-"}, 416),
    ({"If-Range": "{etag}"}, 200),  # without Range, If-Range means nothing
]


def _precondition_id(case: tuple[dict[str, str], int]) -> str:
    headers, status = case
    return ";".join(f"{k}={v}" for k, v in headers.items()) + f"->{status}"


@module_loop
@pytest.mark.parametrize(
    ("template", "status"), PRECONDITION_CASES, ids=[_precondition_id(c) for c in PRECONDITION_CASES]
)
async def test_preconditions(shared: Shared, template: dict[str, str], status: int) -> None:
    data = shared.data[OBJ]
    plain = await raw(shared.client, "HEAD", f"/files/{OBJ}")
    etag, lm = plain.headers["ETag"], plain.headers["Last-Modified"]
    second = timedelta(seconds=1)
    values = {
        "etag": etag,
        "lm": lm,
        "earlier": http_date(parse_date(lm) - second),
        "later": http_date(parse_date(lm) + second),
    }
    headers = {name: value.format(**values) for name, value in template.items()}

    get = await raw(shared.client, "GET", f"/files/{OBJ}", headers)
    assert get.status == status, (headers, get.status, get.body[:200])
    head = await raw(shared.client, "HEAD", f"/files/{OBJ}", headers)
    assert head.body == b""
    if status == 412:
        assert_json_error(get, 412, "precondition_failed")
        assert head.status == 412
    elif status == 304:
        for r in (get, head):
            assert r.status == 304
            assert r.body == b""
            assert r.headers["ETag"] == etag
            assert r.headers["Last-Modified"] == lm
            assert r.headers["Cache-Control"] == "no-cache"
    elif status == 416:
        assert_json_error(get, 416, "range_not_satisfiable")
        assert get.headers["Content-Range"] == f"bytes */{N}"
        assert head.status == 416  # HEAD answers as GET would
        assert head.headers["Content-Range"] == f"bytes */{N}"
    else:
        assert_framed(get)
        assert get.headers["ETag"] == etag
        if status == 206:
            assert get.body == data[10:20]
            assert get.headers["Content-Range"] == f"bytes 10-19/{N}"
        else:
            assert get.body == data
            assert "Content-Range" not in get.headers
        assert head.status == get.status  # HEAD answers as GET would
        assert head.headers["Content-Length"] == get.headers["Content-Length"]
        assert head.headers.get("Content-Range") == get.headers.get("Content-Range")
