"""One serving process: the application on a listening socket until a signal, then a
drain that loses no work.

On SIGTERM the application is marked draining at once (``Lifecycle``, which the
readiness check reads), and for ``server.drain_delay`` seconds new connections are
still accepted and served, so that nginx and load balancers, seeing the readiness
check fail, stop sending here before the port closes. Answers made meanwhile carry
``Connection: close``: a kept-alive connection ends with its answer instead of being
closed later under a client that is just reusing it. Then the listener closes and
the requests in flight get ``server.shutdown_timeout`` seconds to end (web/server.py:
aiohttp's own shutdown would stop reading their bodies); those still running are
cancelled, and a cancelled upload is aborted by its storage
(streaming/cleanups.py, which the backend's close waits for): a PUT or POST leaves
nothing, a tus PATCH keeps the bytes it stored. The exit status is 0.

SIGINT (a terminal's Ctrl-C) does the same without the drain delay: at a terminal
no load balancer is waiting to notice. A SIGINT during a SIGTERM's delay cuts it
short; other repeated signals change nothing, so a signal delivered both by a
terminal and by a parent (workers.py) is harmless.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import signal
from collections.abc import Awaitable, Callable

from aiohttp import web

from proxy.app import create_app
from proxy.config import Config
from proxy.serving import StartError
from proxy.web import descriptors, settings
from proxy.web.access_log import AccessLogger
from proxy.web.server import ProxyRunner
from proxy.web.settings import ConnectionSettings, Lifecycle

log = logging.getLogger(__name__)
ResponseHook = Callable[[web.Request, web.StreamResponse], Awaitable[None]]

# Seconds a request still running when server.shutdown_timeout is over gets, once
# cancelled, to end: a cancelled upload hands its abort to the storage's cleanups
# (which the backend's close waits for) and ends at once.
CANCELLED_WAIT = 1.0
# How often a worker looks whether its parent still runs (workers.py): a parent
# killed with SIGKILL cannot tell its children, and an orphan would hold the port.
PARENT_CHECK_INTERVAL = 1.0


async def serve(
    config: Config, host: str, port: int, *, reuse_port: bool = False, parent: int | None = None
) -> None:
    """Serve ``config`` on ``host``:``port`` until SIGTERM or SIGINT (or, with
    ``parent``, until that process is gone), then drain. ``reuse_port`` sets
    SO_REUSEPORT, for a port several processes share. Raises StartError."""
    _prepare_descriptors(config)
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(descriptors.loop_exception_handler)
    app = create_app(config)
    lifecycle = app[settings.LIFECYCLE]
    app.on_response_prepare.append(_closing_when_draining(lifecycle))
    stop = _Stop(lifecycle)
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.signalled, signum)
    watcher = asyncio.create_task(_watch_parent(parent, stop)) if parent is not None else None
    runner = ProxyRunner(
        app,
        connections=ConnectionSettings.of(config),
        access_log_class=AccessLogger,
        shutdown_timeout=CANCELLED_WAIT,
    )
    try:
        try:
            await runner.setup()  # starts the storage backend
        except OSError as exc:
            raise StartError(_storage_problem(exc)) from None
        try:
            await web.TCPSite(runner, host, port, reuse_port=reuse_port or None).start()
        except OSError as exc:
            raise StartError(listen_problem(exc, host, port)) from None
        log.info("serving on http://%s:%d", host, port)
        await stop.requested.wait()
        delay = config.server.drain_delay
        if delay > 0 and not stop.hurry.is_set():
            log.info("draining: new connections are still served for %g s", delay)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.hurry.wait(), delay)
        log.info("closing the listener")
        await runner.finish_requests(config.server.shutdown_timeout)
    finally:
        if watcher is not None:
            watcher.cancel()
        # The signal handlers stay: a signal now changes nothing (asyncio.run's loop
        # removes them when it closes).
        await runner.cleanup()
    log.info("stopped")


class _Stop:
    """The signals received: ``requested`` at the first, ``hurry`` at a SIGINT."""

    def __init__(self, lifecycle: Lifecycle) -> None:
        self.lifecycle = lifecycle
        self.requested = asyncio.Event()
        self.hurry = asyncio.Event()

    def signalled(self, signum: int) -> None:
        # Readiness turns 503 at once, before anything else is scheduled.
        self.lifecycle.draining = True
        if not self.requested.is_set():
            log.info("%s received: stopping", signal.Signals(signum).name)
        self.requested.set()
        if signum == signal.SIGINT:
            self.hurry.set()


async def _watch_parent(parent: int, stop: _Stop) -> None:
    # No event tells a child that its parent is gone (prctl's PR_SET_PDEATHSIG is
    # Linux's only): it is looked for.
    while os.getppid() == parent:  # noqa: ASYNC110
        await asyncio.sleep(PARENT_CHECK_INTERVAL)
    log.warning("the parent process (pid %d) is gone: stopping", parent)
    stop.signalled(signal.SIGTERM)


def _closing_when_draining(lifecycle: Lifecycle) -> ResponseHook:
    async def close_when_draining(request: web.Request, response: web.StreamResponse) -> None:
        if lifecycle.draining:
            # aiohttp has written its own Connection header by now (hooks run after):
            # the header is set here, and force_close closes the connection after.
            response.force_close()
            response.headers["Connection"] = "close"

    return close_when_draining


def _prepare_descriptors(config: Config) -> None:
    limit = descriptors.raise_descriptor_limit()
    wanted = config.server.max_connections
    if limit is not None and (not wanted or wanted >= limit):
        # Not fatal: past the limit requests are answered 503 until clients leave.
        log.warning(
            "server.max_connections (%s) is not below the descriptor limit (ulimit -n: %d), which "
            "connections, files and S3 connections share: past it requests get 503 server_busy",
            wanted or "no limit",
            limit,
        )


def listen_problem(exc: OSError, host: str, port: int) -> str:
    """The one line that says why ``host``:``port`` cannot be listened on."""
    change = "set server.host/server.port (STREAM_PROXY_SERVER_HOST/_PORT) or --host/--port"
    if exc.errno == errno.EADDRINUSE:
        return f"cannot listen on {host}:{port}: the address is in use; {change}"
    if exc.errno == errno.EACCES:
        return (
            f"cannot listen on {host}:{port}: permission denied (ports below 1024 need privileges); {change}"
        )
    return f"cannot listen on {host}:{port}: {exc.strerror or exc}; {change}"


def _storage_problem(exc: OSError) -> str:
    where = f" ({exc.filename})" if exc.filename else ""
    return (
        f"cannot prepare the storage{where}: {exc.strerror or exc}; "
        "check storage.local.root (STREAM_PROXY_STORAGE_LOCAL_ROOT) and its permissions"
    )
