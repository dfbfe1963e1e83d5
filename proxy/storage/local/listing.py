"""Local directory backend: listings, read incrementally in threads of their own.

A page lists keys in code point order (UTF-8 byte order, as S3 lists them) by a
depth-first walk over each directory's names sorted as the keys they lead to: a file
``n`` as ``n``, a directory ``n`` as ``n/``, since every key below it starts so
(``a-b`` < ``a/x`` < ``a0``). A directory whose keys all lie at or before the cursor
is never opened, and the walk stops at the first object past the page, so a page
reads only the directories on the way from the cursor to its last key, not the
whole subtree.

The walk starts in the directory the prefix names, if that resolves inside the root;
below it, symlinked directories are not followed. Names that can be no key are
passed over, and every name found goes through LocalPaths' check point before it is
listed: names that are no object (a symlink out of the root, a FIFO) are never
counted nor named, not even as the cursor.

Walks run in a small pool of their own: a long one (a huge page, a tree of names
that are no objects) then never holds the default executor's threads, which every
short request's file calls (stat, open, read, write) need.
"""

from __future__ import annotations

import asyncio
import contextvars
import os
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from proxy.rules.keys import (
    INTERNAL_PREFIX,
    is_valid_key,
    is_valid_list_prefix,
    validate_cursor,
    validate_list_prefix,
)
from proxy.storage.base import ObjectInfo, ObjectNotFound, ObjectPage
from proxy.storage.local.paths import LocalPaths

# Two: walks are mostly system calls, so two overlap on a slow disk, and more would
# only share the same cores and disk while holding more memory.
WALK_THREADS = 2
# One pool for the process, shared by every LocalStorage: it bounds what listings
# take from the machine as a whole. Its threads start on the first walk.
_WALKERS = ThreadPoolExecutor(max_workers=WALK_THREADS, thread_name_prefix="stream-proxy-listing")

Describe = Callable[[str], ObjectInfo]


async def list_page(
    paths: LocalPaths, describe: Describe, prefix: str, limit: int, cursor: str | None
) -> ObjectPage:
    """``read_page`` in the listing pool."""
    # As asyncio.to_thread does, so that the walk sees the request's context.
    context = contextvars.copy_context()
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(
        _WALKERS, context.run, read_page, paths, describe, prefix, limit, cursor
    )


def read_page(
    paths: LocalPaths, describe: Describe, prefix: str, limit: int, cursor: str | None
) -> ObjectPage:
    """Up to ``limit`` objects whose keys start with ``prefix``, after ``cursor``, each
    described by ``describe`` (ObjectNotFound for a name that is no object); the next
    cursor is the last key when another object follows. Blocking."""
    validate_list_prefix(prefix)
    if cursor is not None:
        validate_cursor(cursor)
    base, _, start = prefix.rpartition("/")
    top = paths.root / base
    # A symlinked directory could lead anywhere; below it, links are not followed.
    if not paths.holds_objects(top):
        return ObjectPage([], None)
    # Only the root holds the backend's own directory (a link to the root may be
    # the top; nothing below the top can be, as links are not followed there).
    skip_internal = os.path.realpath(top) == str(paths.root)
    keys = _keys(top, f"{base}/" if base else "", start, cursor, skip_internal)
    objects: list[ObjectInfo] = []
    for key in keys:
        try:
            if len(objects) == limit:
                # One object past the page tells whether there is more.
                paths.existing_file(key)
                break
            objects.append(describe(key))
        except ObjectNotFound:
            continue
    else:
        return ObjectPage(objects, None)
    return ObjectPage(objects, objects[-1].key if objects else None)


def _keys(top: Path, top_key: str, start: str, cursor: str | None, skip_internal: bool) -> Iterator[str]:
    """The names below ``top`` that are valid keys after ``cursor``, in key order;
    at the top, only names that begin with ``start``. Reads a directory only when the
    walk reaches it."""
    stack = [iter(_entries(top, top_key, start, cursor, skip_internal))]
    while stack:
        for key, is_dir in stack[-1]:
            if not is_dir:
                if is_valid_key(key):
                    yield key
            elif is_valid_list_prefix(key):
                # ``key`` ends with '/': the directory's path below the top's.
                stack.append(iter(_entries(top / key[len(top_key) :], key, "", cursor, False)))
                break
        else:
            stack.pop()


def _entries(
    directory: Path, dir_key: str, start: str, cursor: str | None, skip_internal: bool
) -> list[tuple[str, bool]]:
    """(key, is a directory) for the names in ``directory`` that begin with ``start``
    and may lead to keys after ``cursor``, sorted by key; a directory's key ends with
    '/'. Nothing is stat'ed: the type comes from the directory entry."""
    found: list[tuple[str, bool]] = []
    try:
        with os.scandir(directory) as names:
            for entry in names:
                name = entry.name
                if not name.startswith(start) or (skip_internal and name == INTERNAL_PREFIX):
                    continue
                try:
                    is_dir = entry.is_dir(follow_symlinks=False)
                except OSError:
                    is_dir = False
                key = f"{dir_key}{name}/" if is_dir else dir_key + name
                if cursor is not None and key <= cursor and not (is_dir and cursor.startswith(key)):
                    continue  # this key, or every key below this directory, is not after the cursor
                found.append((key, is_dir))
    except OSError:  # gone, no directory, unreadable: no objects there, as os.walk has it
        return []
    found.sort()
    return found
