"""Metadata records already read, so that a download need not read the object's
record file again (an open, a read and a JSON parse per request).

A record names the version of the file it describes (inode, size, mtime), and a
version's record is written once: after its file is renamed into place, or, when a
process died in between, by the recovery that finds none (local.resumable). So a
record read for a version stays true for as long as that version is the object:
entries are looked up by key and version, and a new version simply misses. Only
records found are kept; a missing one (a reader between a rename and its record)
is looked for again next time. Used from worker threads, hence the lock.
"""

from __future__ import annotations

import threading
from typing import Any

Version = tuple[int, int, int]  # inode, size, mtime in ns
ENTRIES = 4096  # a few hundred KiB at most; the oldest entry makes room


class MetaCache:
    def __init__(self, entries: int = ENTRIES) -> None:
        self._entries = entries
        self._records: dict[str, tuple[Version, dict[str, Any]]] = {}
        self._lock = threading.Lock()

    def get(self, key: str, version: Version) -> dict[str, Any] | None:
        """The record of ``key`` at ``version``, if one was kept."""
        found = self._records.get(key)
        if found is None or found[0] != version:
            return None
        return found[1]

    def put(self, key: str, version: Version, record: dict[str, Any]) -> None:
        with self._lock:
            self._records.pop(key, None)  # re-inserted last: the newest entry
            if len(self._records) >= self._entries:
                del self._records[next(iter(self._records))]
            self._records[key] = (version, record)

    def forget(self, key: str) -> None:
        with self._lock:
            self._records.pop(key, None)
