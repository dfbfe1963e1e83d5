"""The local directory backend, the embedded default: objects and resumable uploads
under one root directory."""

from __future__ import annotations

from proxy.config import Config
from proxy.storage.backend import Backend
from proxy.storage.local.objects import LocalStorage
from proxy.storage.local.resumable import LocalResumableStore


def build(config: Config) -> Backend:
    storage = LocalStorage(config.storage.local.root)
    return Backend(storage, LocalResumableStore(storage))
