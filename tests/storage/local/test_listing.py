"""Local listings: key order and cursors as a sorted walk of everything would give
them, reading only what a page needs, in threads that never keep short requests
waiting."""

from __future__ import annotations

import asyncio
import os
import tempfile
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy.config import Config, LocalConfig, ServerConfig, StorageConfig
from proxy.rules.keys import InvalidKey, is_valid_key, validate_cursor, validate_list_prefix
from proxy.storage.base import ObjectInfo, ObjectNotFound, ObjectPage
from proxy.storage.local.listing import WALK_THREADS, list_page
from proxy.storage.local.objects import LocalStorage
from proxy.web.settings import STORAGE

# Characters that sort just below and above '/' (0x2F), and multi-byte UTF-8 ones up
# to four bytes; a backslash, a control character and an undecodable byte make names
# that are no key.
VALID_CHARS = ["a", "b", "-", ".", "0", "~", " ", "\u00e9", "\u20ac", "\U0001f600"]
INVALID_CHARS = ["\\", "\x01", "\udcff"]
KINDS = ["file", "file", "file", "link-in", "link-out", "link-dir", "fifo", "empty-dir"]


def _segment(chars: list[str]) -> st.SearchStrategy[str]:
    return (
        st.lists(st.sampled_from(chars), min_size=1, max_size=3)
        .map("".join)
        .filter(lambda s: s not in (".", ".."))
    )


segments = st.one_of(_segment(VALID_CHARS), _segment(VALID_CHARS + INVALID_CHARS))
entries = st.lists(st.tuples(st.lists(segments, min_size=1, max_size=3), st.sampled_from(KINDS)), max_size=25)


def build(root: Path, outside: Path, spec: list[tuple[list[str], str]]) -> list[str]:
    """Make the entries of ``spec`` that fit together under ``root``; return the keys
    of the objects among them (regular files and links to them inside the root), sorted."""
    objects: list[str] = []
    files: list[Path] = []
    for parts, kind in spec:
        path = root.joinpath(*parts)
        ancestors = [root.joinpath(*parts[:i]) for i in range(1, len(parts))]
        if os.path.lexists(path) or any(a.is_symlink() or (a.exists() and not a.is_dir()) for a in ancestors):
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        key = "/".join(parts)
        if kind == "file" or (kind == "link-in" and not files):
            path.write_bytes(b"x")
            if is_valid_key(key):  # a link to a name that is no key is no object either
                files.append(path)
        elif kind == "link-in":
            os.symlink(files[0], path)
        elif kind == "link-out":
            os.symlink(outside / "secret", path)
        elif kind == "link-dir":
            os.symlink(root, path)
        elif kind == "fifo":
            os.mkfifo(path)
        else:
            path.mkdir()
            continue
        if kind in ("file", "link-in") and is_valid_key(key):
            objects.append(key)
    return sorted(objects)  # code point order, as S3 lists keys


def list_once(root: Path, queries: list[tuple[str, int, str | None]]) -> list[ObjectPage | InvalidKey]:
    async def run() -> list[ObjectPage | InvalidKey]:
        storage = LocalStorage(root)
        await storage.start()
        answers: list[ObjectPage | InvalidKey] = []
        try:
            for prefix, limit, cursor in queries:
                try:
                    answers.append(await storage.list(prefix, limit, cursor))
                except InvalidKey as exc:
                    answers.append(exc)
        finally:
            await storage.close()
        return answers

    return asyncio.run(run())


def is_valid(check: Callable[[str], str], text: str) -> bool:
    try:
        check(text)
    except InvalidKey:
        return False
    return True


@settings(max_examples=100, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=entries, data=st.data())
def test_pages_match_a_sorted_walk_of_everything(
    spec: list[tuple[list[str], str]], data: st.DataObject
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root, outside = Path(tmp) / "root", Path(tmp) / "outside"
        root.mkdir()
        outside.mkdir()
        (outside / "secret").write_bytes(b"secret")
        keys = build(root, outside, spec)
        texts = st.lists(st.sampled_from([*VALID_CHARS, "/", *INVALID_CHARS]), max_size=6).map("".join)
        near_keys = st.sampled_from(keys).flatmap(
            lambda k: st.sampled_from(
                [k, k[: len(k) // 2], k.rsplit("/", 1)[0] + "/", k + "/", k + "\U0010fffd"]
            )
        )
        text = st.one_of(texts, near_keys) if keys else texts
        queries = [
            (
                data.draw(text, "prefix"),
                data.draw(st.integers(1, 5), "limit"),
                data.draw(st.none() | text, "cursor"),
            )
            for _ in range(4)
        ]
        for (prefix, limit, cursor), answer in zip(queries, list_once(root, queries), strict=True):
            if not is_valid(validate_list_prefix, prefix) or (
                cursor is not None and not is_valid(validate_cursor, cursor)
            ):
                assert isinstance(answer, InvalidKey), (prefix, cursor, answer)
                continue
            assert isinstance(answer, ObjectPage), (prefix, cursor, answer)
            expected = [k for k in keys if k.startswith(prefix) and (cursor is None or k > cursor)]
            assert [o.key for o in answer.objects] == expected[:limit], (prefix, limit, cursor)
            assert answer.next_cursor == (expected[limit - 1] if len(expected) > limit else None)
            assert all(o.size == 1 for o in answer.objects)
        # Paged through from the start, the pages add up to every object, once each.
        limit = data.draw(st.integers(1, 4), "paging limit")
        listed: list[str] = []
        cursor = None
        for _ in range(len(keys) + 1):
            [page] = list_once(root, [("", limit, cursor)])
            assert isinstance(page, ObjectPage)
            listed += [o.key for o in page.objects]
            if page.next_cursor is None:
                break
            assert page.next_cursor == page.objects[-1].key
            cursor = page.next_cursor
        assert listed == keys


async def test_siblings_sort_as_their_keys(tmp_path: Path) -> None:
    keys = [
        "a",
        "a b",
        "a-b",
        "a.b",
        "a/-",
        "a/x/y",
        "a/x-",
        "a/\u00e9",
        "a0",
        "a~",
        "a\u20ac/z",
        "b",
        "\u00e9/x",
    ]
    for key in keys:
        (tmp_path / key).parent.mkdir(parents=True, exist_ok=True)
        if key != "a":  # "a" is a directory here; the file "a" is tested below
            (tmp_path / key).write_bytes(b"x")
    storage = LocalStorage(tmp_path)
    page = await storage.list("", 100)
    assert [o.key for o in page.objects] == sorted(k for k in keys if k != "a")
    assert page.objects[0].key == "a b" and page.objects[3].key == "a/-"


async def test_keys_longer_than_allowed_are_not_listed(tmp_path: Path) -> None:
    deep = tmp_path.joinpath(*["s" * 250] * 4)  # 1,004 bytes with the slashes
    deep.mkdir(parents=True)
    (deep / ("n" * 20)).write_bytes(b"x")  # a key of 1,024 bytes
    (deep / ("n" * 21)).write_bytes(b"x")  # 1,025
    too_deep = deep / ("t" * 30)
    too_deep.mkdir()
    (too_deep / "x").write_bytes(b"x")
    page = await LocalStorage(tmp_path).list("", 10)
    assert [o.key for o in page.objects] == [str((deep / ("n" * 20)).relative_to(tmp_path))]


# -- what a page reads --------------------------------------------------------------------------------------

DIRS, FILES = 200, 50
SMALL = "small.txt"


@pytest.fixture(scope="module")
def big_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """DIRS directories of FILES one-byte files each, and a five-byte SMALL."""
    root = tmp_path_factory.mktemp("big") / "root"
    for d in range(DIRS):
        directory = root / f"d{d:03d}"
        directory.mkdir(parents=True)
        for f in range(FILES):
            (directory / f"f{f:03d}").write_bytes(b"x")
    (root / SMALL).write_bytes(b"hello")
    return root


@pytest.fixture
async def big_storage(big_tree: Path) -> AsyncIterator[LocalStorage]:
    storage = LocalStorage(big_tree)
    await storage.start()
    yield storage
    await storage.close()


@pytest.fixture
def file_calls(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, list[str]]]:
    """The directories os.scandir reads and the paths os.stat looks at, in any thread:
    the real calls, recorded."""
    calls: dict[str, list[str]] = {"scandir": [], "stat": []}

    def spy(name: str, real: Callable[..., Any]) -> Callable[..., Any]:
        def call(path: Any, *args: Any, **kwargs: Any) -> Any:
            calls[name].append(os.fsdecode(path))
            return real(path, *args, **kwargs)

        return call

    monkeypatch.setattr(os, "scandir", spy("scandir", os.scandir))
    monkeypatch.setattr(os, "stat", spy("stat", os.stat))
    yield calls


def key(d: int, f: int) -> str:
    return f"d{d:03d}/f{f:03d}"


async def test_a_page_from_a_deep_cursor_reads_only_its_directories(
    big_storage: LocalStorage, file_calls: dict[str, list[str]]
) -> None:
    root = big_storage.root
    page = await big_storage.list("", 10, key(150, FILES - 5))
    expected = [key(150, f) for f in range(FILES - 4, FILES)] + [key(151, f) for f in range(6)]
    assert [o.key for o in page.objects] == expected
    assert page.next_cursor == key(151, 5)
    assert file_calls["scandir"] == [str(root), str(root / "d150"), str(root / "d151")]
    # Only the page's objects and the one past it, which tells there is more.
    assert set(file_calls["stat"]) <= {str(root / k) for k in [*expected, key(151, 6)]}


async def test_a_first_page_reads_only_the_first_directory(
    big_storage: LocalStorage, file_calls: dict[str, list[str]]
) -> None:
    page = await big_storage.list("", 5)
    assert [o.key for o in page.objects] == [key(0, f) for f in range(5)]
    assert file_calls["scandir"] == [str(big_storage.root), str(big_storage.root / "d000")]
    assert len(file_calls["stat"]) <= 6


async def test_a_prefix_reads_only_the_directories_it_names(
    big_storage: LocalStorage, file_calls: dict[str, list[str]]
) -> None:
    page = await big_storage.list("d19", 2 * FILES, key(190, 10))
    everything = [key(d, f) for d in range(190, 200) for f in range(FILES)]
    assert [o.key for o in page.objects] == everything[11 : 11 + 2 * FILES]
    assert file_calls["scandir"] == [str(big_storage.root / d) for d in ("", "d190", "d191", "d192")]
    page = await big_storage.list("d199/", 10, key(199, FILES - 5))
    assert [o.key for o in page.objects] == [key(199, f) for f in range(FILES - 4, FILES)]
    assert page.next_cursor is None


async def test_the_last_page_of_the_tree(big_storage: LocalStorage) -> None:
    page = await big_storage.list("", 1000, key(199, FILES - 2))
    assert [o.key for o in page.objects] == [key(199, FILES - 1), SMALL]
    assert page.next_cursor is None


# -- starvation ---------------------------------------------------------------------------------------------


async def listing_threads_idle(storage: LocalStorage) -> None:
    """Return once every listing thread is free: a page is listed in each at the same
    time (they meet at a barrier), so the walks before them are over."""
    barrier = threading.Barrier(WALK_THREADS)

    def meet(key: str) -> ObjectInfo:
        barrier.wait(timeout=600)
        raise ObjectNotFound(key)

    await asyncio.gather(*(list_page(storage.paths, meet, SMALL, 1, None) for _ in range(WALK_THREADS)))


@pytest.mark.slow
@pytest.mark.alone
async def test_long_walks_never_keep_a_short_request_waiting(
    big_tree: Path, proxy_client: Callable[..., Any]
) -> None:
    """Twice as many walks of the whole tree as asyncio's default pool has threads
    (each takes seconds): a GET of five bytes is answered before even that many
    have finished; when the walks held that pool, it waited for all but a few."""
    config = Config(ServerConfig(), StorageConfig(backend="local", local=LocalConfig(root=big_tree)))
    client = await proxy_client(config)
    storage = client.server.app[STORAGE]
    assert isinstance(storage, LocalStorage)
    default_threads = min(32, (os.cpu_count() or 1) + 4)  # ThreadPoolExecutor's default
    finished: list[int] = []

    async def walk() -> None:
        page = await storage.list("", 10**9)
        finished.append(len(page.objects))

    walks = [asyncio.create_task(walk()) for _ in range(2 * default_threads)]
    try:
        await asyncio.sleep(0.1)  # every walk is queued or running
        answer = await client.get(f"/files/{SMALL}")
        assert (answer.status, await answer.read()) == (200, b"hello")
        done_when_answered = len(finished)
        assert done_when_answered < default_threads, (
            f"{done_when_answered} of {len(walks)} walks were over first"
        )
        assert finished == [DIRS * FILES + 1] * done_when_answered
    finally:
        # The walks still queued are dropped; those running end on their own.
        for task in walks:
            task.cancel()
        await asyncio.gather(*walks, return_exceptions=True)
        await asyncio.wait_for(listing_threads_idle(storage), timeout=600)
