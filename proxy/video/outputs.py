"""Where a video's derived files live, and the sink that stores them as ffmpeg
finishes them.

Source key ``K`` has its derived files under ``K.video/``, each attempt at making
them in a directory of its own, ``K.video/<attempt>/``: public keys, so they are
read through the normal /files/ downloads and covered by every grant that covers
``K``; one attempt's files never mix with another's, and an attempt's are removed
by their prefix.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import BinaryIO

from proxy.rules.keys import InvalidKey, validate_key
from proxy.storage.base import Storage
from proxy.video.making import VideoFailed

SUFFIX = ".video/"
# The longest name a maker puts under an attempt (a rendition's segment of a very
# long video): a key that leaves no room for it fails before any work is done.
LONGEST_NAME = "v00/seg000000.m4s"
TOO_LONG = "key too long for renditions"
READ_CHUNK = 1024 * 1024

# What each kind of derived file is served as (the maker's type is the fallback).
CONTENT_TYPES = {
    ".m3u8": "application/vnd.apple.mpegurl",
    ".m4s": "video/iso.segment",
    ".mp4": "video/mp4",
    ".jpg": "image/jpeg",
}


def derived_prefix(key: str) -> str:
    """The folder of every derived file of ``key``."""
    return key + SUFFIX


def attempt_prefix(key: str, attempt: str) -> str:
    return f"{derived_prefix(key)}{attempt}/"


def attempt_of(derived_key: str, key: str) -> str | None:
    """The attempt a key under ``derived_prefix(key)`` belongs to (None if none)."""
    rest = derived_key.removeprefix(derived_prefix(key))
    if rest == derived_key or "/" not in rest:
        return None
    return rest.split("/", 1)[0]


def check_room(key: str, attempt: str) -> None:
    """VideoFailed when the derived files of ``key`` would break the key rules."""
    try:
        validate_key(attempt_prefix(key, attempt) + LONGEST_NAME)
    except InvalidKey:
        raise VideoFailed(TOO_LONG) from None


class StorageSink:
    """The maker's OutputSink: each finished file stored under one attempt's prefix,
    read from its temporary file in a thread, chunk by chunk. ``before_put`` runs
    first (it raises when the job's claim is known lost: nothing more is stored)."""

    def __init__(self, storage: Storage, prefix: str, before_put: Callable[[], None]) -> None:
        self.storage = storage
        self.prefix = prefix
        self.before_put = before_put
        self.stored: list[str] = []

    async def put(self, name: str, path: Path, content_type: str) -> None:
        self.before_put()
        key = self.prefix + name
        try:
            validate_key(key)
        except InvalidKey:
            raise VideoFailed(TOO_LONG) from None
        kind = CONTENT_TYPES.get(Path(name).suffix.lower(), content_type)
        fh = await asyncio.to_thread(open, path, "rb")
        try:
            size = await asyncio.to_thread(lambda: Path(path).stat().st_size)
            await self.storage.write(key, _chunks(fh), content_type=kind, size=size)
        finally:
            await asyncio.to_thread(fh.close)
        self.stored.append(key)


async def _chunks(fh: BinaryIO) -> AsyncIterator[bytes]:
    while True:
        chunk = await asyncio.to_thread(fh.read, READ_CHUNK)
        if not chunk:
            return
        yield chunk
