"""Storage.delete_prefix, held on every backend alike: a folder's objects go, and
nothing else does.

Each test runs on the local directory, S3 on moto, S3 on Ceph RGW and the in-memory
fake (conftest.py's ``subject``), and checks what is left: the listing, stat, the
raw names in the directory or bucket, and the backend's own files.
"""

from __future__ import annotations

import asyncio
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from moto.core.models import DEFAULT_ACCOUNT_ID
from moto.s3.models import s3_backends

from proxy.metrics.definitions import REGISTRY
from proxy.rules.keys import InvalidKey
from proxy.storage import layout
from proxy.storage.base import ObjectNotFound
from proxy.storage.local.objects import LocalStorage
from proxy.storage.s3.objects import S3Storage
from tests.conftest import S3Endpoint, S3View, new_upload_state, s3_config
from tests.storage.contract.conftest import Subject, append, body_of, finish, listed, payload, read, write
from tests.storage.memory import MemoryStorage

# "a/" must take the first three and leave the rest: siblings that share its text
# without the slash ("ab/", "a-b/", "a0"), and the same names elsewhere.
INSIDE = ["a/x.mp4", "a/b/y.mp4", "a/b/c/z.mp4"]
OUTSIDE = ["ab/x.mp4", "a-b/x.mp4", "a0", "b/a/x.mp4", "top.mp4"]
# A name S3 stores and a directory holds, but no key can have (a backslash).
NO_KEY = "a/back\\slash"


async def keys(subject: Subject, prefix: str = "") -> list[str]:
    return [o.key for o in await listed(subject.objects, prefix)]


async def fill(subject: Subject, names: list[str]) -> None:
    for i, key in enumerate(names):
        await write(subject.objects, key, payload(100 + i, seed=i))


def s3_place(name: str, request: pytest.FixtureRequest) -> tuple[S3Endpoint, str]:
    """The endpoint and bucket of the S3 backend ``name`` (the subject's, if it has one)."""
    endpoint: S3Endpoint = request.getfixturevalue("moto_endpoint" if name == "moto" else "real_s3")
    bucket: str = request.getfixturevalue("moto_bucket" if name == "moto" else "real_bucket")
    return endpoint, bucket


class Raw:
    """Names put in the directory or bucket past the backend, and read back so."""

    def __init__(self, subject: Subject, request: pytest.FixtureRequest, tmp_path: Path) -> None:
        self.subject = subject
        self.root = tmp_path / "data"
        self.s3: S3View | None = None
        if subject.name in ("moto", "rgw"):
            self.s3 = S3View(*s3_place(subject.name, request))

    def put(self, name: str, data: bytes) -> None:
        objects = self.subject.objects
        if isinstance(objects, MemoryStorage):
            objects.put_entry(name, data)
        elif self.s3 is not None:
            self.s3.client.put_object(Bucket=self.s3.bucket, Key=name, Body=data)
        else:
            path = self.root / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)

    def names(self) -> list[str]:
        """Every name stored, the backend's own included (locally: files only)."""
        objects = self.subject.objects
        if isinstance(objects, MemoryStorage):
            return objects.stored_keys()
        if self.s3 is not None:
            return self.s3.all_keys()
        return sorted(str(p.relative_to(self.root)) for p in self.root.rglob("*") if not p.is_dir())


# -- what goes and what stays ------------------------------------------------------------


async def test_a_folder_goes_and_nothing_else(subject: Subject) -> None:
    await fill(subject, INSIDE + OUTSIDE)
    assert await subject.objects.delete_prefix("a/") == len(INSIDE)
    assert await keys(subject) == sorted(OUTSIDE)
    for key in INSIDE:
        with pytest.raises(ObjectNotFound):
            await subject.objects.stat(key)
        with pytest.raises(ObjectNotFound):
            await read(subject.objects, key)
    # The siblings are whole, bytes and all.
    for i, key in enumerate(OUTSIDE, start=len(INSIDE)):
        assert await read(subject.objects, key) == payload(100 + i, seed=i)
    assert subject.leftovers() == []


async def test_a_nested_folder_and_then_its_parent(subject: Subject) -> None:
    await fill(subject, INSIDE + OUTSIDE)
    assert await subject.objects.delete_prefix("a/b/") == 2
    assert await keys(subject, "a/") == ["a/x.mp4"]
    assert await subject.objects.delete_prefix("a/b/") == 0
    assert await subject.objects.delete_prefix("a/") == 1
    assert await keys(subject) == sorted(OUTSIDE)


async def test_a_folder_can_be_written_again(subject: Subject) -> None:
    await fill(subject, INSIDE)
    assert await subject.objects.delete_prefix("a/") == 3
    data = payload(1234, seed=9)
    await write(subject.objects, "a/b/c/z.mp4", data)
    assert await read(subject.objects, "a/b/c/z.mp4") == data
    assert await keys(subject) == ["a/b/c/z.mp4"]


async def test_nothing_there_is_zero(subject: Subject) -> None:
    assert await subject.objects.delete_prefix("") == 0
    assert await subject.objects.delete_prefix("nothing/here/") == 0
    await fill(subject, OUTSIDE)
    assert await subject.objects.delete_prefix("nothing/") == 0
    # "a" is an object's whole key and a prefix of "a-b/...": no folder "a/".
    assert await subject.objects.delete_prefix("a/") == 0
    assert await keys(subject) == sorted(OUTSIDE)


async def test_everything_but_the_backends_own_files(subject: Subject) -> None:
    """The empty prefix takes every object, and never a resumable upload's state or
    bytes: the upload goes on and can still be finished, even under a deleted folder."""
    await fill(subject, INSIDE + OUTSIDE)
    data = payload(3000, seed=5)
    state = await subject.uploads.create(new_upload_state(len(data), key="a/upload.mp4"))
    await append(subject.uploads, state.id, body_of([data[:1000]]))
    leftovers = subject.leftovers()
    assert leftovers == [f"upload {state.id}"]
    assert await subject.objects.delete_prefix("") == len(INSIDE + OUTSIDE)
    assert await keys(subject) == []
    assert subject.leftovers() == leftovers
    await append(subject.uploads, state.id, body_of([data[1000:]]))
    info = await finish(subject.uploads, state.id)
    assert info.key == "a/upload.mp4"
    assert await read(subject.objects, "a/upload.mp4") == data
    assert await keys(subject) == ["a/upload.mp4"]


async def test_names_no_key_can_have_stay(
    subject: Subject, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    raw = Raw(subject, request, tmp_path)
    await fill(subject, INSIDE)
    raw.put(NO_KEY, b"not an object")
    assert await subject.objects.delete_prefix("a/") == len(INSIDE)
    assert NO_KEY in raw.names()
    assert await subject.objects.delete_prefix("") == 0
    assert [n for n in raw.names() if not layout.is_internal(n)] == [NO_KEY]


# No folder ("a"), a leading or doubled '/', dot segments, a backslash, control
# characters, the backend's own, a segment over 255 bytes, a key over 1,024.
BAD = ["a", "a/b", "/a/", "a//", "./", "../", "a/../", "a\\b/", "a\x00/", "a\n/", ".stream-proxy/"]
BAD += ["x" * 256 + "/", "/".join(["x" * 200] * 6) + "/"]


async def test_a_bad_prefix_is_refused_and_deletes_nothing(subject: Subject) -> None:
    # One backend for all of them: a bucket each would cost seconds apiece.
    await fill(subject, INSIDE + OUTSIDE)
    for prefix in BAD:
        with pytest.raises(InvalidKey):
            await subject.objects.delete_prefix(prefix)
        assert await keys(subject) == sorted(INSIDE + OUTSIDE), prefix


async def test_writes_during_the_delete_succeed_and_are_whole_or_gone(subject: Subject) -> None:
    """What the delete saw is gone; what was written meanwhile is either gone too
    (and counted) or there with all its bytes; no write fails for the folder being
    pruned under it."""
    old = [f"a/{i % 5}/old-{i:03d}" for i in range(60)]
    await fill(subject, old)
    new = {f"a/{i % 5}/new-{i:02d}": payload(50 + i, seed=100 + i) for i in range(12)}

    async def writes() -> None:
        for key, data in new.items():
            await write(subject.objects, key, data)
            await asyncio.sleep(0)

    deleted, _ = await asyncio.gather(subject.objects.delete_prefix("a/"), writes())
    left = await keys(subject)
    assert set(left) <= set(new)
    for key in left:
        assert await read(subject.objects, key) == new[key]
    assert deleted == len(old) + len(new) - len(left)


# -- many objects on S3 ----------------------------------------------------------------------


def _delete_objects_calls() -> float:
    return REGISTRY.get_sample_value("stream_proxy_s3_requests_total", {"operation": "DeleteObjects"}) or 0.0


def _seed(name: str, endpoint: S3Endpoint, bucket: str, keys: list[str]) -> None:
    """Put ``keys`` in the bucket, each holding its own name. Blocking."""
    if name == "moto":
        # Straight into the moto server's store (it runs in this process): over
        # HTTP, moto takes about 20 ms a PutObject, a minute for these.
        backend = s3_backends[DEFAULT_ACCOUNT_ID]["aws"]
        for key in keys:
            backend.put_object(bucket, key, key.encode())
        return
    client = endpoint.client()
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda key: client.put_object(Bucket=bucket, Key=key, Body=key.encode()), keys))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["moto", pytest.param("rgw", marks=pytest.mark.real_s3)])
async def test_2001_objects_in_three_delete_objects_calls(name: str, request: pytest.FixtureRequest) -> None:
    endpoint, bucket = s3_place(name, request)
    # Three batches with the fewest objects to make (making them is most of the time).
    names = [f"many/{i // 100:02d}/{i:05d}" for i in range(2001)]
    kept = ["many0", "other/x", NO_KEY.replace("a/", "many/")]
    await asyncio.to_thread(_seed, name, endpoint, bucket, names + kept)
    storage = S3Storage(s3_config(endpoint, bucket))
    await storage.start()
    try:
        before = _delete_objects_calls()
        assert await storage.delete_prefix("many/") == 2001
        # 1,000 + 1,000 + 1, each key once.
        assert _delete_objects_calls() - before == 3
        view = S3View(endpoint, bucket)
        assert [k for k in view.all_keys() if not layout.is_internal(k)] == sorted(kept)
    finally:
        await storage.close()


# -- the local directory: what is left on disk ------------------------------------------------


async def test_local_leaves_no_directories_nor_metadata(tmp_path: Path) -> None:
    root = tmp_path / "data"
    storage = LocalStorage(root)
    await storage.start()
    try:
        for key in [*INSIDE, "deep/er/still/x.mp4", "keep/k.mp4"]:
            await write(storage, key, b"abc")
        outside = tmp_path / "outside.txt"
        outside.write_bytes(b"not in the root")
        (root / "a" / "b" / "link-out").symlink_to(outside)
        (root / "a" / "link-in").symlink_to(root / "keep" / "k.mp4")
        # The link inside the root is an object (a DELETE would remove the link, not
        # what it points at); the one out of it is none and stays.
        assert await storage.delete_prefix("a/") == len(INSIDE) + 1
        assert await storage.delete_prefix("deep/er/") == 1
        assert outside.read_bytes() == b"not in the root"
        assert (root / "keep" / "k.mp4").read_bytes() == b"abc"
        assert sorted(p.name for p in (root / "a" / "b").iterdir()) == ["link-out"]
        os.unlink(root / "a" / "b" / "link-out")
        assert await storage.delete_prefix("a/") == 0
        # Emptied directories went, up to the root, as a DELETE prunes them.
        assert sorted(p.name for p in root.iterdir()) == [".stream-proxy", "keep"]
        meta = [p for p in (root / layout.META).rglob("*")]
        assert [p.name for p in meta if p.is_file()] == [Path(layout.meta_key("keep/k.mp4")).name]
        assert len([p for p in meta if p.is_dir()]) == 1
        # A folder that is a link to the root: its objects are the root's, as a
        # DELETE of each reaches them; the backend's own directories stay, empty or not.
        (root / layout.TMP / "empty").mkdir()
        own = _directories(root / layout.INTERNAL)
        (root / "link").symlink_to(root)
        assert await storage.delete_prefix("link/") == 1
        assert sorted(p.name for p in root.iterdir()) == [".stream-proxy", "link"]
        assert own <= _directories(root / layout.INTERNAL)
        assert (root / layout.TMP / "empty").is_dir()
    finally:
        await storage.close()


def _directories(top: Path) -> set[Path]:
    return {p for p in top.rglob("*") if p.is_dir()}
