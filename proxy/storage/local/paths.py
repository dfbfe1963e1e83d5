"""Every path the local backend uses, made from keys and upload ids in one place.

A key becomes a path only through ``object()``, which validates it (rules.keys), and
the backend's own files only through the reserved layout (storage.layout).
``check_inside`` guards the one thing validation cannot see: a symlinked directory
under the root that leads outside it.
"""

from __future__ import annotations

import uuid
from pathlib import Path

from proxy.rules.keys import InvalidKey, validate_key
from proxy.storage import layout
from proxy.storage.resumable import UPLOAD_ID


class LocalPaths:
    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.tmp = self.root / layout.TMP
        self.meta = self.root / layout.META
        self.uploads = self.root / layout.UPLOADS

    def object(self, key: str) -> Path:
        """The data file of ``key``; refuses keys that would escape the root or use
        the backend's own directory."""
        return self.root / validate_key(key)

    def meta_of(self, key: str) -> Path:
        """The metadata file of ``key``, a key already validated."""
        return self.root / layout.meta_key(key)

    def temp(self, suffix: str) -> Path:
        """A fresh name in the backend's temporary directory, on the objects' file
        system so that whatever is made there can be renamed into place."""
        return self.tmp / f"{uuid.uuid4().hex}{suffix}"

    def upload(self, upload_id: str) -> Path:
        """The directory of a resumable upload."""
        # The handler checks ids too; a path is never built from one that is unchecked.
        if not UPLOAD_ID.fullmatch(upload_id):
            raise ValueError(f"not an upload id: {upload_id!r}")
        return self.root / layout.upload_prefix(upload_id)

    def check_inside(self, path: Path) -> None:
        # Keys are validated, but a symlinked directory under the root could still
        # lead outside it.
        parent = path.parent.resolve()
        if parent != self.root and self.root not in parent.parents:
            raise InvalidKey("key resolves outside the storage root")
