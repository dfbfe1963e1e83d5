"""The aiohttp application: routes, error handling and the storage lifecycle."""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from proxy.config import Config
from proxy.errors import error_middleware
from proxy.handlers import downloads, files, listing
from proxy.storage.base import Storage
from proxy.storage.local import LocalStorage
from proxy.storage.s3 import S3Storage


def make_storage(config: Config) -> Storage:
    if config.storage.backend == "s3":
        return S3Storage(config.storage.s3)
    return LocalStorage(config.storage.local.root)


def create_app(config: Config, storage: Storage | None = None) -> web.Application:
    app = web.Application(middlewares=[error_middleware], client_max_size=1024**2)
    app[files.STORAGE] = storage or make_storage(config)
    app[files.MAX_UPLOAD] = config.server.max_upload_bytes
    app[downloads.DOWNLOADS] = downloads.DownloadSettings(
        cache_control=config.server.cache_control, max_ranges=config.server.max_ranges
    )
    app.cleanup_ctx.append(_storage_lifecycle)
    files.add_routes(app)
    app.router.add_get(files.KEY_ROUTE, downloads.get_file)  # and HEAD
    app.router.add_get("/files", listing.list_files)
    return app


async def _storage_lifecycle(app: web.Application) -> AsyncIterator[None]:
    storage = app[files.STORAGE]
    await storage.start()
    yield
    await storage.close()
