"""One writer at a time per key, across every process sharing a local root.

What it guards is short: the step that makes a key's file and its metadata agree.
Publishing renames the finished file into place and then its metadata; a delete
unlinks both. Two such steps on one key, interleaved, leave metadata that describes
a file the key no longer holds (its SHA-256 and type are then lost) or an object
without the metadata written for it. Under the lock they run one after the other,
so the last step to run leaves the key's file and metadata in agreement. Bodies
stream and are synced before it is taken; the lock covers renames and unlinks only.

The lock files are striped (storage.layout's ``locks/<h2>``): a fixed number of
them, a key mapped to one by its hash, made on first use and never removed. A lock
file that can be removed could be removed under its holder, and a flock on a removed
file excludes nobody who opens the name anew; one file per key would pile up. Keys
that share a stripe only wait for each other's short step.

A flock belongs to the open file: ``held`` opens the stripe anew each time, so two
threads of one process exclude each other as two processes do, and the kernel drops
the lock however its holder ends (a crash never leaves one held). It waits in
``flock``: call it in a worker thread, never on the event loop. Like the lock of a
resumable upload (local.resumable), it holds between processes on one host's local
file system, not across hosts on a network file system.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator

from proxy.storage.local.paths import LocalPaths

# Read-only is enough to flock; never through a symlink planted in its place.
_LOCK_FLAGS = os.O_RDONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC


class KeyLocks:
    def __init__(self, paths: LocalPaths) -> None:
        self._paths = paths

    def prepare(self) -> None:
        """Make the lock directory. Blocking."""
        self._paths.locks.mkdir(parents=True, exist_ok=True)

    @contextlib.contextmanager
    def held(self, key: str) -> Iterator[None]:
        """Hold ``key``'s stripe exclusively, waiting for it. Blocking: in a thread."""
        fd = self._open(key)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # and with it the flock

    def _open(self, key: str) -> int:
        path = self._paths.lock_of(key)
        try:
            return os.open(path, _LOCK_FLAGS, 0o666)
        except FileNotFoundError:
            # A backend used before start(), or a root whose directory was removed.
            self.prepare()
            return os.open(path, _LOCK_FLAGS, 0o666)
