"""Command line: ``stream-proxy serve [--config PATH] [--host H] [--port P]``."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from aiohttp import web

from proxy.app import create_app
from proxy.config import ConfigError, load_config


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
    web.run_app(
        create_app(config),
        host=host,
        port=port,
        shutdown_timeout=config.server.shutdown_timeout,
        access_log_format='%a "%r" %s %b %Tfs',
    )
    return 0
