"""The aiohttp application: wires the config's backend, settings, routes and the
background sweep together; it decides nothing itself."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

from aiohttp import web

from proxy.config import Config
from proxy.storage import local, s3
from proxy.storage.backend import Backend
from proxy.storage.expiry import sweep_forever
from proxy.web import auth, cors, forwarded, metrics, settings
from proxy.web.admission import admission_middleware
from proxy.web.common_headers import add_common_headers
from proxy.web.errors import error_middleware
from proxy.web.routes import add_routes

BACKENDS: dict[str, Callable[[Config], Backend]] = {"local": local.build, "s3": s3.build}


def create_app(config: Config, backend: Backend | None = None) -> web.Application:
    """The application for ``config``; ``backend`` replaces the one it names."""
    # CORS preflights are answered before admission, whose checks (access control
    # among them) they carry no credentials for. Behind a trusted proxy, all of them
    # see the client's address, scheme and host (forwarded.py).
    middlewares = [
        metrics.metrics_middleware,  # first: it counts every request in flight
        forwarded.forwarded_middleware,
        error_middleware,
        cors.cors_middleware,
        admission_middleware,
    ]
    app = web.Application(middlewares=middlewares, client_max_size=1024**2)
    settings.install(app, config, backend or BACKENDS[config.storage.backend](config))
    auth.install(app, config)
    cors.install(app, config)
    metrics.install(app)
    app.on_response_prepare.append(add_common_headers)
    app.on_response_prepare.append(cors.add_cors_headers)
    app.cleanup_ctx.append(_backend_lifecycle)
    add_routes(
        app,
        serve_metrics=config.server.metrics,
        serve_page=config.server.web_ui,
        serve_videos=app[settings.VIDEOS] is not None,
    )
    return app


async def _backend_lifecycle(app: web.Application) -> AsyncIterator[None]:
    backend = app[settings.BACKEND]
    videos = app[settings.VIDEOS]
    await backend.start()
    sweeper = asyncio.create_task(sweep_forever(backend.uploads, app[settings.SWEEP_INTERVAL]))
    try:
        if videos is not None:
            await videos.start()  # and its job loop, unless video.jobs is false
        yield
    finally:
        sweeper.cancel()
        # Whatever the sweeper ended with, what was opened is closed.
        with contextlib.suppress(BaseException):
            await sweeper
        if videos is not None:
            # Before the backend: running jobs are stopped and their claims released.
            await videos.close()
        await backend.close()
