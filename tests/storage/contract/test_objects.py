"""The Storage promises (proxy/storage/base.py), held on every backend alike.

Each test runs on the local directory, S3 on moto, S3 on Ceph RGW and the in-memory
fake (conftest.py's ``subject``). It checks what a caller can see: the bytes and
hashes that come back, what the listing shows, which error is raised, and what
unfinished work left behind.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest

from proxy.rules.keys import InvalidKey
from proxy.storage.base import ObjectInfo, ObjectNotFound
from proxy.streaming.bodies import BodyTooLarge
from tests.conftest import new_upload_state
from tests.storage.contract.conftest import (
    PART,
    Subject,
    append,
    body_of,
    cut_off,
    listed,
    payload,
    pieces,
    read,
    sha256,
    write,
)
from tests.storage.memory import READ_CHUNK

KEY = "videos/clip.mp4"


def entries(objects: list[ObjectInfo]) -> list[tuple[str, int, str]]:
    return [(o.key, o.size, o.etag) for o in objects]


# -- writing and reading whole objects ------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, 256 * 1024 + 3, PART + 1, 2 * PART + 7])
async def test_round_trip(subject: Subject, size: int) -> None:
    data = payload(size, seed=size)
    info = await write(subject.objects, KEY, data)
    assert (info.key, info.size, info.sha256, info.content_type) == (KEY, size, sha256(data), "video/mp4")
    stat = await subject.objects.stat(KEY)
    assert (stat.key, stat.size, stat.etag, stat.sha256, stat.content_type) == (
        KEY,
        size,
        info.etag,
        sha256(data),
        "video/mp4",
    )
    assert await read(subject.objects, KEY) == data
    assert entries(await listed(subject.objects)) == [(KEY, size, info.etag)]
    assert subject.leftovers() == []


@pytest.mark.parametrize("size", [1, 2 * PART + 7])
async def test_an_announced_size_changes_nothing_seen(subject: Subject, size: int) -> None:
    data = payload(size, seed=3)
    info = await write(subject.objects, KEY, data, size=size)
    assert (info.size, info.sha256) == (size, sha256(data))
    assert (await subject.objects.stat(KEY)).sha256 == sha256(data)
    assert await read(subject.objects, KEY) == data


@pytest.mark.parametrize(
    "content_type", ["video/mp4", "text/plain; charset=utf-8", "application/octet-stream"]
)
async def test_stat_fields(subject: Subject, content_type: str) -> None:
    data = payload(1000)
    before = datetime.now(UTC)
    info = await write(subject.objects, KEY, data, content_type=content_type)
    stat = await subject.objects.stat(KEY)
    assert stat.size == len(data)
    assert stat.content_type == content_type
    assert stat.sha256 == sha256(data)
    # Strong and quoted, as an ETag header carries it.
    assert stat.etag == info.etag
    assert len(stat.etag) > 2 and stat.etag.startswith('"') and stat.etag.endswith('"')
    assert '"' not in stat.etag[1:-1]
    # Dated, with a time zone, by a clock that agrees with ours (S3: the server's,
    # with one-second resolution).
    assert stat.last_modified.tzinfo is not None
    assert before - timedelta(minutes=5) < stat.last_modified < datetime.now(UTC) + timedelta(minutes=5)
    # The validators stay the same as long as the object does.
    again = await subject.objects.stat(KEY)
    assert (again.etag, again.last_modified, again.size) == (stat.etag, stat.last_modified, stat.size)
    assert (await subject.objects.stat(KEY, recent=True)).etag == stat.etag


@pytest.mark.parametrize(("first", "second"), [(2 * PART + 7, 10), (10, PART + 1)], ids=["shrink", "grow"])
async def test_an_overwrite_replaces_the_whole_object(subject: Subject, first: int, second: int) -> None:
    old = await write(subject.objects, KEY, payload(first, seed=1), content_type="video/mp4")
    data = payload(second, seed=2)
    new = await write(subject.objects, KEY, data, content_type="video/webm")
    assert new.etag != old.etag
    stat = await subject.objects.stat(KEY)
    assert (stat.size, stat.etag, stat.sha256, stat.content_type) == (
        second,
        new.etag,
        sha256(data),
        "video/webm",
    )
    assert await read(subject.objects, KEY) == data
    assert entries(await listed(subject.objects)) == [(KEY, second, new.etag)]
    assert subject.leftovers() == []


# -- failed and unfinished writes ------------------------------------------------------------


@pytest.mark.parametrize("cut", [1000, 2 * PART + 5], ids=["before-a-part", "after-two-parts"])
@pytest.mark.parametrize(
    "error", [ConnectionResetError("client gone"), BodyTooLarge(PART)], ids=["reset", "too-large"]
)
async def test_a_failing_body_leaves_nothing_and_keeps_the_previous_version(
    subject: Subject, cut: int, error: Exception
) -> None:
    old = payload(PART + 3, seed=1)
    previous = await write(subject.objects, KEY, old)
    new = payload(3 * PART, seed=2)
    for key in (KEY, "fresh/key.mp4"):
        with pytest.raises(type(error)):
            await subject.objects.write(key, cut_off(pieces(new[:cut]), error), content_type="video/mp4")
    stat = await subject.objects.stat(KEY)
    assert (stat.etag, stat.size, stat.sha256) == (previous.etag, len(old), sha256(old))
    assert await read(subject.objects, KEY) == old
    with pytest.raises(ObjectNotFound):
        await subject.objects.stat("fresh/key.mp4")
    assert entries(await listed(subject.objects)) == [(KEY, len(old), previous.etag)]
    assert subject.leftovers() == []


async def stalled_write(subject: Subject, key: str, data: bytes, gate: asyncio.Event) -> asyncio.Task[object]:
    """A write that has given the backend ``data`` and waits for ``gate`` to end."""
    given = asyncio.Event()

    async def body() -> AsyncIterator[bytes]:
        for chunk in pieces(data):
            yield chunk
        given.set()
        await gate.wait()

    task: asyncio.Task[object] = asyncio.create_task(
        subject.objects.write(key, body(), content_type="video/mp4")
    )
    async with asyncio.timeout(30):
        await given.wait()
    await asyncio.sleep(0.1)  # let the backend act on what it was given
    return task


async def test_an_object_is_visible_only_once_complete(subject: Subject) -> None:
    old = payload(10, seed=1)
    previous = await write(subject.objects, KEY, old)
    data = payload(PART + 100, seed=2)  # S3: a part is on its way
    gate = asyncio.Event()
    writes = [await stalled_write(subject, key, data, gate) for key in (KEY, "new.mp4")]

    assert (await subject.objects.stat(KEY)).etag == previous.etag
    assert await read(subject.objects, KEY) == old
    assert await read(subject.objects, KEY, etag=previous.etag) == old
    with pytest.raises(ObjectNotFound):
        await subject.objects.stat("new.mp4")
    with pytest.raises(ObjectNotFound):
        await read(subject.objects, "new.mp4")
    assert entries(await listed(subject.objects)) == [(KEY, len(old), previous.etag)]

    gate.set()
    for task in writes:
        await task
    for key in (KEY, "new.mp4"):
        assert (await subject.objects.stat(key)).sha256 == sha256(data)
        assert await read(subject.objects, key) == data
    assert subject.leftovers() == []


async def test_a_cancelled_write_leaves_nothing(subject: Subject) -> None:
    old = payload(10, seed=1)
    previous = await write(subject.objects, KEY, old)
    gate = asyncio.Event()
    writes = [await stalled_write(subject, key, payload(PART + 100), gate) for key in (KEY, "new.mp4")]
    for task in writes:
        task.cancel()  # as aiohttp cancels a handler whose client has gone
        with pytest.raises(asyncio.CancelledError):
            await task
    assert (await subject.objects.stat(KEY)).etag == previous.etag
    assert await read(subject.objects, KEY) == old
    with pytest.raises(ObjectNotFound):
        await subject.objects.stat("new.mp4")
    assert subject.leftovers() == []


# -- reading -----------------------------------------------------------------------------------


async def test_ranged_reads(subject: Subject) -> None:
    data = payload(PART + 1000)
    info = await write(subject.objects, KEY, data)
    n = len(data)
    ranges = [
        (0, 0),
        (0, None),
        (1, 1),
        (0, n - 1),
        (n - 1, None),
        (n - 1, n - 1),
        (n - 10, None),
        (1000, 300_000),
        (READ_CHUNK - 1, READ_CHUNK),  # across a read chunk, on every backend
        (256 * 1024 - 1, 4 * 256 * 1024 + 1),
        (300_000, PART + 500),
    ]
    for start, end in ranges:
        expected = data[start : None if end is None else end + 1]
        assert await read(subject.objects, KEY, start, end) == expected, (start, end)
        assert await read(subject.objects, KEY, start, end, etag=info.etag) == expected, (start, end)


async def test_a_read_with_a_stale_etag_is_not_found(subject: Subject) -> None:
    old = await write(subject.objects, KEY, payload(100, seed=1))
    data = payload(PART + 1, seed=2)
    new = await write(subject.objects, KEY, data)
    with pytest.raises(ObjectNotFound):
        await read(subject.objects, KEY, etag=old.etag)
    with pytest.raises(ObjectNotFound):
        await read(subject.objects, KEY, 1, 2, etag=old.etag)
    assert await read(subject.objects, KEY, etag=new.etag) == data
    assert await read(subject.objects, KEY, 1, 2, etag=new.etag) == data[1:3]
    await subject.objects.delete(KEY)
    with pytest.raises(ObjectNotFound):
        await read(subject.objects, KEY, etag=new.etag)


async def test_a_recent_stat_never_mixes_versions(subject: Subject) -> None:
    """``recent`` may answer from before another process's overwrite; a read with
    the ETag it gave then returns exactly that version, or ObjectNotFound."""
    versions = {}
    first = payload(300, seed=1)
    versions[(await write(subject.objects, KEY, first)).etag] = first
    await subject.objects.stat(KEY, recent=True)
    other = await subject.another()
    second = payload(500, seed=2)
    versions[(await write(other.objects, KEY, second)).etag] = second
    seen = await subject.objects.stat(KEY, recent=True)
    assert seen.etag in versions
    try:
        data = await read(subject.objects, KEY, etag=seen.etag)
    except ObjectNotFound:
        assert seen.etag != (await subject.objects.stat(KEY)).etag
    else:
        assert data == versions[seen.etag]
    assert await read(subject.objects, KEY) == second


async def test_missing_objects_are_not_found(subject: Subject) -> None:
    await write(subject.objects, "there/a", b"a")
    for key in ("nowhere", "there", "there/b", "there/a/below"):
        with pytest.raises(ObjectNotFound):
            await subject.objects.stat(key)
        with pytest.raises(ObjectNotFound):
            await read(subject.objects, key)
        with pytest.raises(ObjectNotFound):
            await subject.objects.delete(key)
    assert await read(subject.objects, "there/a") == b"a"


# -- deleting ----------------------------------------------------------------------------------


async def test_delete(subject: Subject) -> None:
    kept = await write(subject.objects, "d/2", b"two")
    await write(subject.objects, "d/1", payload(PART + 1))
    await subject.objects.delete("d/1")
    with pytest.raises(ObjectNotFound):
        await subject.objects.stat("d/1")
    with pytest.raises(ObjectNotFound):
        await read(subject.objects, "d/1")
    with pytest.raises(ObjectNotFound):
        await subject.objects.delete("d/1")
    assert entries(await listed(subject.objects)) == [("d/2", 3, kept.etag)]
    assert await read(subject.objects, "d/2") == b"two"
    # The key can be written again.
    await write(subject.objects, "d/1", b"again")
    assert await read(subject.objects, "d/1") == b"again"
    assert subject.leftovers() == []


# -- listing -------------------------------------------------------------------------------------

KEYS = ["m/2", "m/10", "n/4", "m/1", "m/sub/3", "m/z", "m/é", "m-x", "m/Z", "m/~", "m/sub/deeper/5"]


@pytest.mark.parametrize("limit", [1, 2, 3, 1000])
async def test_list_pages_in_key_order(subject: Subject, limit: int) -> None:
    written = {}
    for i, key in enumerate(KEYS):  # not in key order
        written[key] = await write(subject.objects, key, payload(i + 1, seed=i))
    for prefix in ("m/", "m", "", "m/sub/", "none/"):
        found = await listed(subject.objects, prefix, limit)
        # Code point order is UTF-8 byte order, as S3 lists.
        assert [o.key for o in found] == sorted(k for k in KEYS if k.startswith(prefix)), prefix
        for o in found:
            assert (o.size, o.etag) == (written[o.key].size, written[o.key].etag)
    # A cursor need not be a key: the page starts after it.
    page = await subject.objects.list("m/", limit, "m/15")
    assert [o.key for o in page.objects] == sorted(k for k in KEYS if k.startswith("m/") and k > "m/15")[
        :limit
    ]
    # A full page that is not the last says where to go on.
    page = await subject.objects.list("m/", 2)
    assert [o.key for o in page.objects] == sorted(k for k in KEYS if k.startswith("m/"))[:2]
    assert page.next_cursor == page.objects[-1].key


async def test_the_backends_own_files_are_never_listed(subject: Subject) -> None:
    ids = set()
    for _ in range(3):
        state = await subject.uploads.create(new_upload_state(None))
        await append(subject.uploads, state.id, body_of([b"bytes that fill no part"]))
        ids.add(state.id)
    # '+' sorts before '.stream-proxy/' and 'z' after it.
    for key in ("+first", "z1", "z2"):
        await write(subject.objects, key, b"x")
    assert set(await subject.uploads.upload_ids()) == ids
    for limit in (1, 2, 10):
        assert [o.key for o in await listed(subject.objects, "", limit)] == ["+first", "z1", "z2"]
    # Prefixes that reach into the reserved name show nothing of it.
    for prefix in (".", ".stream", ".stream-proxy"):
        page = await subject.objects.list(prefix)
        assert (page.objects, page.next_cursor) == ([], None), prefix
    for prefix in (".stream-proxy/", ".stream-proxy/uploads/"):
        with pytest.raises(InvalidKey):
            await subject.objects.list(prefix)


BAD_PREFIXES = {
    "leading-slash": "/m/",
    "empty-segment": "m//",
    "dot-segment": "./",
    "dot-dot-segment": "m/../",
    "backslash": "m\\",
    "control-character": "m/\x01",
    "lone-surrogate": "\ud800",
    "segment-too-long": "m/" + "x" * 256,
    "too-long": "m/" * 513,
}


@pytest.mark.parametrize("prefix", BAD_PREFIXES.values(), ids=BAD_PREFIXES.keys())
async def test_invalid_list_prefixes_are_refused(subject: Subject, prefix: str) -> None:
    await write(subject.objects, "m/1", b"x")
    with pytest.raises(InvalidKey):
        await subject.objects.list(prefix)


# -- keys ------------------------------------------------------------------------------------------

BAD_KEYS = {
    "empty": "",
    "leading-slash": "/videos/a",
    "trailing-slash": "videos/",
    "empty-segment": "a//b",
    "dot": "./a",
    "dot-segment": "a/./b",
    "dot-dot": "a/../b",
    "only-dot-dot": "..",
    "backslash": "a\\b",
    "nul": "a\x00b",
    "tab": "a\tb",
    "del": "a\x7fb",
    "lone-surrogate": "a\ud800",
    "reserved": ".stream-proxy",
    "reserved-below": ".stream-proxy/x",
    "reserved-tmp": ".stream-proxy/tmp/x",
    "segment-too-long": "a/" + "x" * 256,
    "too-long": "/".join(["x" * 200] * 6),
    "one-byte-too-long": "/".join(["é" * 100] * 5) + "/" + "x" * 20,
}


@pytest.mark.parametrize("key", BAD_KEYS.values(), ids=BAD_KEYS.keys())
async def test_invalid_keys_are_refused(subject: Subject, key: str) -> None:
    with pytest.raises(InvalidKey):
        await write(subject.objects, key, b"data")
    with pytest.raises(InvalidKey):
        await subject.objects.stat(key)
    with pytest.raises(InvalidKey):
        await read(subject.objects, key)
    with pytest.raises(InvalidKey):
        await subject.objects.delete(key)
    assert await listed(subject.objects) == []
    assert subject.leftovers() == []


# Segments of at most 255 bytes: a local file name is no longer.
LONGEST = "/".join(["é" * 100] * 5) + "/" + "x" * 19
GOOD_KEYS = {
    "punctuation": "spaces and + plus/100% sure?#&=~!$'();,@[].mp4",
    "unicode": "vidéos/日本語/ファイル 1.mp4",
    "dots": "dots/.../..x/.hidden",
    "longest": LONGEST,
}


@pytest.mark.parametrize("key", GOOD_KEYS.values(), ids=GOOD_KEYS.keys())
async def test_keys_of_any_allowed_character_round_trip(subject: Subject, key: str) -> None:
    assert len(LONGEST.encode()) == 1024
    data = payload(100)
    info = await write(subject.objects, key, data)
    assert info.key == key
    assert (await subject.objects.stat(key)).etag == info.etag
    assert await read(subject.objects, key, etag=info.etag) == data
    assert [o.key for o in await listed(subject.objects)] == [key]
    await subject.objects.delete(key)
    with pytest.raises(ObjectNotFound):
        await subject.objects.stat(key)
    assert await listed(subject.objects) == []
