"""The aiohttp application: routes, error handling and the storage lifecycle."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from aiohttp import web

from proxy.config import Config
from proxy.errors import error_middleware
from proxy.handlers import downloads, files, listing, uploads
from proxy.storage.base import Storage
from proxy.storage.local import LocalStorage
from proxy.storage.local_resumable import LocalResumableStore
from proxy.storage.resumable import ResumableStore
from proxy.storage.s3 import S3Storage
from proxy.storage.s3_resumable import S3ResumableStore
from proxy.upload_expiry import sweep_forever

SWEEP_INTERVAL: web.AppKey[float] = web.AppKey("sweep_interval", float)


def make_storage(config: Config) -> Storage:
    if config.storage.backend == "s3":
        return S3Storage(config.storage.s3)
    return LocalStorage(config.storage.local.root)


def make_resumable(storage: Storage, config: Config) -> ResumableStore:
    """Resumable uploads keep their state in the same backend as the objects."""
    if isinstance(storage, S3Storage):
        return S3ResumableStore(storage, lock_lease=config.tus.lock_lease)
    if isinstance(storage, LocalStorage):
        return LocalResumableStore(storage)
    raise TypeError(f"no resumable upload store for {type(storage).__name__}")


def create_app(config: Config, storage: Storage | None = None) -> web.Application:
    app = web.Application(middlewares=[error_middleware], client_max_size=1024**2)
    app[files.STORAGE] = storage = storage or make_storage(config)
    app[files.MAX_UPLOAD] = config.server.max_upload_bytes
    app[downloads.DOWNLOADS] = downloads.DownloadSettings(
        cache_control=config.server.cache_control,
        max_ranges=config.server.max_ranges,
        send_timeout=config.server.send_timeout or None,
    )
    app[uploads.UPLOADS] = make_resumable(storage, config)
    app[uploads.TUS] = uploads.TusSettings(
        key_template=config.tus.key_template,
        expiration=config.tus.expiration,
        max_size=config.server.max_upload_bytes,
    )
    app[SWEEP_INTERVAL] = config.tus.sweep_interval
    app.cleanup_ctx.append(_storage_lifecycle)
    files.add_routes(app)
    app.router.add_get(files.KEY_ROUTE, downloads.get_file)  # and HEAD
    app.router.add_get("/files", listing.list_files)
    uploads.add_routes(app)
    return app


async def _storage_lifecycle(app: web.Application) -> AsyncIterator[None]:
    storage, resumable = app[files.STORAGE], app[uploads.UPLOADS]
    await storage.start()
    await resumable.start()
    sweeper = asyncio.create_task(sweep_forever(resumable, app[SWEEP_INTERVAL]))
    yield
    sweeper.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await sweeper
    await resumable.close()
    await storage.close()
