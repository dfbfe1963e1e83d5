"""A backend as the application uses it: its objects and its resumable uploads,
kept in the same directory or bucket and started and closed together."""

from __future__ import annotations

from dataclasses import dataclass

from proxy.storage.base import Storage
from proxy.storage.resumable import ResumableStore


@dataclass(frozen=True)
class Backend:
    objects: Storage
    uploads: ResumableStore

    async def start(self) -> None:
        await self.objects.start()
        await self.uploads.start()

    async def close(self) -> None:
        # Uploads first: they may still be finishing work in the objects' store.
        await self.uploads.close()
        await self.objects.close()
