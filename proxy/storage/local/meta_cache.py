"""Metadata records already read, so that a download need not read the object's
record file again (an open, a read and a JSON parse per request).

A record names the version of the file it describes (inode, size, mtime), and a
version's record is written once: after its file is renamed into place, or, when a
process died in between, by the recovery that finds none (local.resumable). So a
record read for a version stays true for as long as that version is the object:
entries are looked up by key and version, and a new version simply misses. A
version found without a record (a file put into the directory by hand, or a reader
between a publish's rename and its record) is looked for again after MISSING_FOR
seconds: a record written meanwhile is seen that late at most. Used from worker
threads too, hence the lock.
"""

from __future__ import annotations

import math
import threading
import time
from typing import Any

Version = tuple[int, int, int]  # inode, size, mtime in ns
ENTRIES = 4096  # a few hundred KiB at most; the oldest entry makes room
MISSING_FOR = 1.0  # seconds a version without a record is taken to have none


class MetaCache:
    def __init__(self, entries: int = ENTRIES, missing_for: float = MISSING_FOR) -> None:
        self._entries = entries
        self._missing_for = missing_for
        # key -> (version, record ({} for none), until when it holds, monotonic)
        self._records: dict[str, tuple[Version, dict[str, Any], float]] = {}
        self._lock = threading.Lock()

    def get(self, key: str, version: Version) -> dict[str, Any] | None:
        """The record of ``key`` at ``version`` ({}: it has none), if known."""
        found = self._records.get(key)
        if found is None or found[0] != version or found[2] < time.monotonic():
            return None
        return found[1]

    def put(self, key: str, version: Version, record: dict[str, Any]) -> None:
        self._keep(key, (version, record, math.inf))

    def put_missing(self, key: str, version: Version) -> None:
        self._keep(key, (version, {}, time.monotonic() + self._missing_for))

    def _keep(self, key: str, entry: tuple[Version, dict[str, Any], float]) -> None:
        with self._lock:
            self._records.pop(key, None)  # re-inserted last: the newest entry
            if len(self._records) >= self._entries:
                del self._records[next(iter(self._records))]
            self._records[key] = entry

    def forget(self, key: str) -> None:
        with self._lock:
            self._records.pop(key, None)
