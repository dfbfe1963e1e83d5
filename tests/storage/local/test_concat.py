"""Partial uploads' files assembled into one (proxy/storage/local/concat.py): by
copy_file_range, and by reads and writes where the kernel will not copy."""

from __future__ import annotations

import contextlib
import hashlib
import os
from dataclasses import replace
from pathlib import Path

import pytest

from proxy.storage.base import KeyConflict, StorageError
from proxy.storage.local.concat import assemble, copy_range
from proxy.storage.local.objects import LocalStorage
from proxy.storage.local.resumable import LocalResumableStore
from proxy.storage.resumable import UploadBody
from proxy.streaming.sha256_state import ResumableSha256
from tests.conftest import LocalView, agen, new_upload_state


def sources(tmp_path: Path, contents: list[bytes], extra: bytes = b"") -> list[tuple[Path, int]]:
    """Files holding ``contents``, each followed by ``extra`` bytes that are not the
    upload's (a writer that died past its saved offset)."""
    made = []
    for n, data in enumerate(contents):
        path = tmp_path / f"part{n}"
        path.write_bytes(data + extra)
        made.append((path, len(data)))
    return made


@pytest.mark.parametrize("kernel", [True, False])
def test_copy_range_appends_exactly_the_bytes(tmp_path: Path, kernel: bool) -> None:
    data = [os.urandom(3 * 1024 * 1024 + 7), b"", os.urandom(1000)]
    target = tmp_path / "out"
    with open(target, "wb") as out:
        for path, size in sources(tmp_path, data, extra=b"junk"):
            with open(path, "rb") as src:
                copy_range(src.fileno(), out.fileno(), size, kernel=kernel)
    assert target.read_bytes() == b"".join(data)


async def test_assemble_hashes_on_from_the_first_partials_state(tmp_path: Path) -> None:
    data = [os.urandom(5 * 1024 * 1024 + 3), os.urandom(4 * 1024 * 1024 + 1), os.urandom(17)]
    first = ResumableSha256()
    first.update(data[0])
    target = tmp_path / "whole"
    state = await assemble(sources(tmp_path, data, extra=b"left over"), target, first.state())
    whole = b"".join(data)
    assert target.read_bytes() == whole
    assert ResumableSha256(state).hexdigest() == hashlib.sha256(whole).hexdigest()


async def test_a_short_file_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "short"
    path.write_bytes(b"abc")
    with pytest.raises(StorageError):
        await assemble([(tmp_path / "short", 3), (path, 10)], tmp_path / "out", ResumableSha256().state())


async def test_a_final_that_cannot_be_published_leaves_nothing(tmp_path: Path) -> None:
    root = tmp_path / "root"
    storage = LocalStorage(root)
    await storage.start()
    store = LocalResumableStore(storage)
    await store.start()
    try:
        await storage.write("taken", agen([b"a file where the final's folder would be"]), content_type=None)
        ids = []
        for data in (b"first", b"second"):
            state = await store.create(replace(new_upload_state(len(data)), concat="partial"))
            async with store.lock(state.id) as held:
                held = await store.append(held, UploadBody(agen([data]), state=held))
                await store.seal(held)
            ids.append(state.id)
        final = replace(new_upload_state(11, key="taken/whole"), concat="final;x", offset=11, done=True)
        async with contextlib.AsyncExitStack() as stack:
            held_all = [await stack.enter_async_context(store.lock(i)) for i in ids]
            with pytest.raises(KeyConflict):
                await store.concatenate(final, held_all)
        # No temporary file, no final: the partials, whole, and the object that was there.
        assert LocalView(root).leftovers() == sorted(f"upload {i}" for i in ids)
        assert [(await store.get(i)).done for i in ids] == [True, True]
        assert LocalView(root).keys() == ["taken"]
    finally:
        await store.close()
        await storage.close()
