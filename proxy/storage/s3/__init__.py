"""The S3 backend (AWS or any S3-compatible server): objects and resumable uploads
in one bucket."""

from __future__ import annotations

from proxy.config import Config
from proxy.storage.backend import Backend
from proxy.storage.s3.objects import S3Storage
from proxy.storage.s3.resumable.store import S3ResumableStore


def build(config: Config) -> Backend:
    storage = S3Storage(config.storage.s3)
    return Backend(storage, S3ResumableStore(storage, lock_lease=config.tus.lock_lease))
