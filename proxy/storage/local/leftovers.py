"""Temporary files whose writer died, recognised by a lock and removed.

Each process keeps its temporary files (bodies being uploaded, metadata being
written, resumable uploads being built or removed: whatever LocalPaths.temp() names)
in a directory of its own, ``tmp/<id>.process/`` (storage.layout), and holds an
exclusive ``flock`` on that directory for as long as it runs. The kernel drops the
lock when the process ends, however it ends (SIGKILL and crashes included), so a
process directory whose lock another process can take belongs to no living process:
the sweep takes the lock, removes the directory with everything in it, and only then
lets go. A live process's directory is never touched, and nothing is judged by age.
Each process sweeps at start and every ``SWEEP_INTERVAL`` seconds, so a restart
clears what the process before it left, and a survivor clears what its dead
neighbours left.

No race between making a directory and locking it: a process makes its directory
under its final name, locks it, and then checks that the name still leads to the
directory it locked. A sweeper that came between took the lock first and removes the
directory before letting go, so the maker either fails to lock or finds the name
gone, and tries again with a new name. Names are never reused.

Entries straight in ``tmp/`` (not a process directory) were left by versions before
this scheme, which may still be running during an upgrade: they keep the old rule and
are removed once older than a day (``STALE_SECONDS``).

Like the lock of a resumable upload, this holds between all processes sharing the
root on one host's local file system, containers on that host included; on a network
file system a lock may not be seen by processes on other hosts.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import time
import uuid
from pathlib import Path

from proxy.storage.base import StorageError
from proxy.storage.layout import TMP_PROCESS_SUFFIX

log = logging.getLogger(__name__)

SWEEP_INTERVAL = 300.0
# Old versions' temporary files this old are left over from a crashed process, not a
# slow upload.
STALE_SECONDS = 24 * 3600
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class ProcessTemp:
    """This process's locked directory in ``tmp``, and the sweep of dead ones.
    Every method blocks: call them in a thread."""

    def __init__(self, tmp: Path) -> None:
        self._tmp = tmp
        self.directory: Path | None = None
        self._fd: int | None = None

    def claim(self) -> Path:
        """Make and lock this process's directory; returns it."""
        if self.directory is not None:
            return self.directory
        for _ in range(100):
            path = self._tmp / f"{uuid.uuid4().hex}{TMP_PROCESS_SUFFIX}"
            os.mkdir(path)
            try:
                fd = os.open(path, _DIR_FLAGS)
            except FileNotFoundError:
                continue  # a sweeper came first and removed it
            if _lock(fd) and _still_named(path, fd):
                self.directory, self._fd = path, fd
                return path
            os.close(fd)  # a sweeper came first and removes it
        raise StorageError(f"could not claim a temporary directory in {self._tmp}")

    def release(self) -> None:
        """Remove this process's directory and what is left in it, then let go of it."""
        if self.directory is None or self._fd is None:
            return
        # Removed while locked, so no sweeper works on it at the same time.
        shutil.rmtree(self.directory, ignore_errors=True)
        os.close(self._fd)
        self.directory, self._fd = None, None

    def sweep(self, now: float | None = None) -> int:
        """Remove what dead processes left in ``tmp``; returns how many entries went."""
        cutoff = (time.time() if now is None else now) - STALE_SECONDS
        removed = 0
        with os.scandir(self._tmp) as entries:
            found = list(entries)
        for entry in found:
            if self.directory is not None and entry.path == str(self.directory):
                continue
            try:
                if entry.name.endswith(TMP_PROCESS_SUFFIX) and entry.is_dir(follow_symlinks=False):
                    removed += _remove_unlocked(entry.path)
                elif entry.stat(follow_symlinks=False).st_mtime < cutoff:
                    _remove(entry)
                    removed += 1
            except OSError as exc:
                # One entry that cannot go must not keep the others.
                log.warning("could not remove the leftover %s: %s", entry.path, exc)
        if removed:
            log.info("removed %d temporary entries left by processes that ended", removed)
        return removed


def _lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _still_named(path: Path, fd: int) -> bool:
    """Whether ``path`` still is the directory open as ``fd``."""
    try:
        return os.stat(path, follow_symlinks=False).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
        return False


def _remove_unlocked(path: str) -> int:
    """Remove the process directory ``path`` if no process holds its lock."""
    try:
        fd = os.open(path, _DIR_FLAGS)
    except FileNotFoundError:
        return 0  # another process swept it meanwhile
    try:
        if not _lock(fd):
            return 0  # its process is alive
        shutil.rmtree(path)
        return 1
    finally:
        os.close(fd)


def _remove(entry: os.DirEntry[str]) -> None:
    if entry.is_dir(follow_symlinks=False):
        shutil.rmtree(entry.path)
    else:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(entry.path)
