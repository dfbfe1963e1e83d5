"""Every path the local backend uses, made from keys and upload ids in one place.

A key becomes a path only through ``object()``, which validates it (rules.keys), and
the backend's own files only through the reserved layout (storage.layout). What
validation cannot see is what is on disk: symlinks placed under the root. Every read
of an object goes through ``existing_file`` or ``open_existing``, the one check
point: the whole path is resolved, and it must end inside the root, outside the
backend's own directory, at a regular file; anything else is ObjectNotFound. Writes
go through ``check_writable``: the directory a file is renamed into must resolve
there too, checked before any directory is made (a rename replaces a symlink at the
key itself, never its target).
"""

from __future__ import annotations

import os
import stat
import uuid
from pathlib import Path
from typing import BinaryIO

from proxy.rules.keys import INTERNAL_PREFIX, InvalidKey, validate_key
from proxy.storage import layout
from proxy.storage.base import ObjectNotFound
from proxy.storage.resumable import UPLOAD_ID

# Never follow a symlink that appears after the check; never wait on a FIFO.
_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


class LocalPaths:
    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.tmp = self.root / layout.TMP
        self.meta = self.root / layout.META
        self.uploads = self.root / layout.UPLOADS
        self.locks = self.root / layout.LOCKS
        # This process's locked directory in tmp (local.leftovers), once the backend
        # has claimed it at start; until then temporary names are straight in tmp.
        self.own_tmp: Path | None = None

    def object(self, key: str) -> Path:
        """The data file of ``key``; refuses keys that would escape the root or use
        the backend's own directory."""
        return self.root / validate_key(key)

    def existing_file(self, key: str) -> tuple[Path, os.stat_result]:
        """The regular file that holds ``key``, resolved, and its stat; ObjectNotFound
        unless the whole path ends inside the root, at a name that is a valid key, on
        a regular file. Blocking."""
        real = Path(os.path.realpath(self.object(key)))
        try:
            validate_key(str(real.relative_to(self.root)))
            st = os.stat(real)
        except (ValueError, OSError):  # outside the root, internal, or not there
            raise ObjectNotFound(key) from None
        if not stat.S_ISREG(st.st_mode):
            raise ObjectNotFound(key)
        return real, st

    def open_existing(self, key: str) -> tuple[BinaryIO, os.stat_result]:
        """``existing_file`` opened for reading, checked again on the descriptor, and
        the descriptor's stat: the opened version's. Blocking."""
        real, _ = self.existing_file(key)
        try:
            fd = os.open(real, _OPEN_FLAGS)
        except OSError:  # gone, or replaced by a symlink since the check
            raise ObjectNotFound(key) from None
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            raise ObjectNotFound(key)
        return os.fdopen(fd, "rb"), st

    def meta_of(self, key: str) -> Path:
        """The metadata file of ``key``, a key already validated."""
        return self.root / layout.meta_key(key)

    def lock_of(self, key: str) -> Path:
        """The lock file of ``key``'s stripe (local.keylocks), a key already validated."""
        return self.root / layout.lock_key(key)

    def temp(self, suffix: str) -> Path:
        """A fresh name in this process's temporary directory, on the objects' file
        system so that whatever is made there can be renamed into place, and removed
        by another process's sweep if this one dies (local.leftovers)."""
        return (self.own_tmp or self.tmp) / f"{uuid.uuid4().hex}{suffix}"

    def upload(self, upload_id: str) -> Path:
        """The directory of a resumable upload."""
        # The handler checks ids too; a path is never built from one that is unchecked.
        if not UPLOAD_ID.fullmatch(upload_id):
            raise ValueError(f"not an upload id: {upload_id!r}")
        return self.root / layout.upload_prefix(upload_id)

    def check_writable(self, path: Path) -> None:
        """Refuse to write the object file ``path`` if its directory leads, through a
        symlink, outside the root or into the backend's own directory. Checked on the
        deepest part of it that exists, before any directory is made."""
        existing = path.parent
        while not os.path.lexists(existing):
            existing = existing.parent
        if not self.holds_objects(existing):
            raise InvalidKey("key resolves outside the storage")

    def holds_objects(self, directory: Path) -> bool:
        """Whether ``directory`` resolves to the root or a folder of objects in it."""
        real = Path(os.path.realpath(directory))
        if real == self.root:
            return True
        return self.root in real.parents and real.relative_to(self.root).parts[0] != INTERNAL_PREFIX
