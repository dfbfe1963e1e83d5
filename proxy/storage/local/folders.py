"""Local directory backend: deleting a folder, every object under a key prefix.

The walk is bottom-up, depth-first: a directory's names are read, its objects
removed one at a time exactly as a DELETE of each would remove it (``remove``:
under the key's lock, with its metadata), then its subdirectories, and last the
directory itself if that left it empty. A name counts when it is a valid key under
the prefix and LocalPaths' check point takes it for an object, as a listing shows
it: symlinks out of the root, FIFOs, names that can be no key and the backend's own
directory are left alone, and symlinked directories below the top are not entered.

It runs in steps of at most ``STEP`` removals, each in a small pool of its own,
with the event loop free in between: a huge tree never holds the default
executor's threads, which every short request's file calls need, nor a request
cancelled meanwhile for longer than one step. A file written into a directory after
the walk read it stays (and so does its directory): what the walk saw is gone.
"""

from __future__ import annotations

import asyncio
import contextvars
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from proxy.rules.keys import (
    INTERNAL_PREFIX,
    is_valid_key,
    is_valid_list_prefix,
    validate_prefix,
)
from proxy.storage.base import DeleteIncomplete, ObjectNotFound
from proxy.storage.local.paths import LocalPaths

# Removals per step: a few tens of milliseconds of system calls, so that a cancelled
# request stops soon and two large deletes take turns.
STEP = 256
# Its own pool, as listings have (local.listing): one process-wide bound on what
# folder deletes take from the disk and the default executor's threads.
_DELETERS = ThreadPoolExecutor(max_workers=2, thread_name_prefix="stream-proxy-delete")

Remove = Callable[[str], None]


async def delete_prefix(paths: LocalPaths, remove: Remove, prefix: str) -> int:
    """Delete every object under the folder ``prefix`` with ``remove`` (a key's
    DELETE, blocking, without pruning; ObjectNotFound for a name that is no object);
    the number removed. DeleteIncomplete if some could not be."""
    validate_prefix(prefix)
    walk = _Walk(paths, remove, prefix)
    loop = asyncio.get_running_loop()
    # As asyncio.to_thread does, so that the steps see the request's context.
    context = contextvars.copy_context()
    while not await loop.run_in_executor(_DELETERS, context.run, walk.step):
        pass
    if walk.failed:
        raise DeleteIncomplete(
            f"{walk.failed} names under the prefix could not be removed: {walk.first_error}",
            deleted=walk.deleted,
        )
    return walk.deleted


@dataclass
class _Directory:
    path: Path
    key: str  # the keys below it start so: '' (the root) or ending in '/'
    files: list[str] = field(default_factory=list)
    subdirectories: list[str] = field(default_factory=list)


class _Walk:
    """The walk's state between steps: the directories from the top to where it is."""

    def __init__(self, paths: LocalPaths, remove: Remove, prefix: str) -> None:
        self._paths = paths
        self._remove = remove
        self._prefix = prefix
        self._stack: list[_Directory] = []
        self._meta_dirs: set[Path] = set()
        self._started = False
        self.deleted = 0
        self.failed = 0
        self.first_error = ""

    def step(self) -> bool:
        """Remove up to STEP objects; True once the walk is over. Blocking."""
        if not self._started:
            self._started = True
            top = self._paths.root / self._prefix
            # As a listing: the top may be reached through a symlink inside the root,
            # even one to the root itself, whose own directory is then passed over.
            if self._paths.holds_objects(top) and os.path.isdir(top):
                self._enter(top, self._prefix, at_root=os.path.realpath(top) == str(self._paths.root))
        budget = STEP
        while self._stack and budget > 0:
            here = self._stack[-1]
            if here.files:
                self._remove_one(here.key + here.files.pop())
                budget -= 1
            elif here.subdirectories:
                name = here.subdirectories.pop()
                self._enter(here.path / name, f"{here.key}{name}/")
            else:
                self._stack.pop()
                self._leave(here)
        if self._stack:
            return False
        self._finish()
        return True

    def _enter(self, directory: Path, key: str, *, at_root: bool = False) -> None:
        here = _Directory(directory, key)
        try:
            with os.scandir(directory) as names:
                for entry in names:
                    name = entry.name
                    if at_root and name == INTERNAL_PREFIX:
                        continue  # the backend's own files: never an object, never pruned
                    try:
                        is_dir = entry.is_dir(follow_symlinks=False)
                    except OSError:
                        is_dir = False
                    if not is_dir:
                        here.files.append(name)
                    elif is_valid_list_prefix(f"{key}{name}/"):
                        here.subdirectories.append(name)
        except FileNotFoundError:
            return  # removed meanwhile: nothing left there to delete
        except OSError as exc:  # unreadable: its objects, if any, stay
            self._fail(exc)
            return
        self._stack.append(here)

    def _remove_one(self, key: str) -> None:
        if not is_valid_key(key):
            return
        try:
            self._remove(key)
        except ObjectNotFound:
            return  # no object (a symlink out of the root, a FIFO), or gone meanwhile
        except OSError as exc:
            self._fail(exc)
            return
        self.deleted += 1
        self._meta_dirs.add(self._paths.meta_of(key).parent)

    def _leave(self, directory: _Directory) -> None:
        # Emptied, it goes, as a DELETE prunes; not the root, and not a directory
        # that holds what the walk left or a writer put there since.
        if directory.path != self._paths.root:
            _rmdir(directory.path)

    def _finish(self) -> None:
        # The folder's parents, emptied now, go as a DELETE's would; and the
        # metadata directories the removals emptied.
        parent = (self._paths.root / self._prefix).parent
        while parent != self._paths.root and self._paths.root in parent.parents and _rmdir(parent):
            parent = parent.parent
        for directory in self._meta_dirs:
            _rmdir(directory)

    def _fail(self, exc: OSError) -> None:
        self.failed += 1
        if not self.first_error:
            self.first_error = f"{type(exc).__name__}: {exc.strerror or exc}"


def _rmdir(directory: Path) -> bool:
    try:
        directory.rmdir()
    except OSError:  # not empty, gone, or a symlink: left as it is
        return False
    return True
