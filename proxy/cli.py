"""Command line: ``stream-proxy serve [--config PATH] [--host H] [--port P]``.

Whatever a user can get wrong at start (a bad setting, a port in use, a storage root
that cannot be made) is one line on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import logging
import sys
from pathlib import Path

from aiohttp import web

from proxy.app import create_app
from proxy.config import Config, ConfigError, load_config
from proxy.web import descriptors
from proxy.web.server import ProxyRunner
from proxy.web.settings import ConnectionSettings

ACCESS_LOG_FORMAT = '%a "%r" %s %b %Tfs'


class StartError(Exception):
    """The server cannot start for a reason the user can mend; str() says how."""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="stream-proxy", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the HTTP server")
    serve.add_argument("--config", type=Path, default=None, help="TOML config file")
    serve.add_argument("--host", default=None, help="overrides server.host")
    serve.add_argument("--port", type=int, default=None, help="overrides server.port")
    args = parser.parse_args(argv)

    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"stream-proxy: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    host = args.host or config.server.host
    port = config.server.port if args.port is None else args.port
    try:
        asyncio.run(_serve(config, host, port))
    except StartError as exc:
        print(f"stream-proxy: {exc}", file=sys.stderr)
        return 2
    except (web.GracefulExit, KeyboardInterrupt):
        pass
    return 0


async def _serve(config: Config, host: str, port: int) -> None:
    _prepare_descriptors(config)
    asyncio.get_running_loop().set_exception_handler(descriptors.loop_exception_handler)
    runner = ProxyRunner(
        create_app(config),
        connections=ConnectionSettings.of(config),
        handle_signals=True,
        access_log_format=ACCESS_LOG_FORMAT,
        shutdown_timeout=config.server.shutdown_timeout,
    )
    try:
        try:
            await runner.setup()  # starts the storage backend
        except OSError as exc:
            raise StartError(_storage_problem(exc)) from None
        try:
            await web.TCPSite(runner, host, port).start()
        except OSError as exc:
            raise StartError(_listen_problem(exc, host, port)) from None
        logging.getLogger(__name__).info("serving on http://%s:%d", host, port)
        await asyncio.Event().wait()  # until a signal ends the loop (GracefulExit)
    finally:
        await runner.cleanup()


def _prepare_descriptors(config: Config) -> None:
    limit = descriptors.raise_descriptor_limit()
    wanted = config.server.max_connections
    if limit is not None and (not wanted or wanted >= limit):
        # Not fatal: past the limit requests are answered 503 until clients leave.
        logging.getLogger(__name__).warning(
            "server.max_connections (%s) is not below the descriptor limit (ulimit -n: %d), which "
            "connections, files and S3 connections share: past it requests get 503 server_busy",
            wanted or "no limit",
            limit,
        )


def _listen_problem(exc: OSError, host: str, port: int) -> str:
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
