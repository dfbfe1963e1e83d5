"""The page's files (static/), read once, in a thread, on first use, and kept in
memory with the content type and a strong ETag of each: only these are ever served,
so no request path reaches the file system."""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass
from pathlib import Path

STATIC = Path(__file__).resolve().parent / "static"
_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json",
    ".LICENSE": "text/plain; charset=utf-8",
}


@dataclass(frozen=True)
class StaticFile:
    body: bytes
    content_type: str
    etag: str


def _read_all(root: Path) -> dict[str, StaticFile]:
    """Every servable file under ``root`` by its path there: only these are ever
    served, so no request path reaches the file system."""
    found = {}
    for path in sorted(root.rglob("*")):
        content_type = _TYPES.get(path.suffix)
        if path.is_file() and content_type is not None:
            body = path.read_bytes()
            etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
            found[path.relative_to(root).as_posix()] = StaticFile(body, content_type, etag)
    return found


class PageFiles:
    def __init__(self, root: Path = STATIC) -> None:
        self.root = root
        self._files: dict[str, StaticFile] | None = None
        self._lock = asyncio.Lock()

    async def get(self, name: str) -> StaticFile | None:
        if self._files is None:
            async with self._lock:
                if self._files is None:
                    self._files = await asyncio.to_thread(_read_all, self.root)
        return self._files.get(name)
