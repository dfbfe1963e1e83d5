"""Command line: ``stream-proxy serve [--config PATH] [--host H] [--port P]
[--workers N]``, ``stream-proxy worker [--config PATH]`` (video jobs only, no
listener), and the access control helpers: ``token new``, ``signing-key new`` and
``sign``. Serving itself (one process or several, and the drain) and the worker are
in proxy/serving/.

Whatever a user can get wrong at start (a bad setting, a port in use, a storage root
that cannot be made, no access control on a public address) is one line on stderr
and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import socket
import sys
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from proxy import logs
from proxy.config import ConfigError, load_config
from proxy.config_tables import parse_size
from proxy.rules.content_types import InvalidContentType, validate_media_type
from proxy.rules.grants import Action, InvalidGrant, parse_grant
from proxy.rules.keys import InvalidKey, validate_key, validate_list_prefix
from proxy.rules.signatures import SignedGrant, is_key_id, new_signing_secret, signed_url
from proxy.rules.tokens import hash_secret, is_token_name, new_secret
from proxy.serving import StartError, process, worker, workers

NO_AUTH = (
    "refusing to serve on {host} with no access control: add an [auth] section with tokens "
    "(`stream-proxy token new NAME --grant read,list:` prints one), or set auth.open = true "
    "to let anyone read and write"
)


class UsageError(Exception):
    """A command was given something it cannot use; str() says what."""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="stream-proxy", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the HTTP server")
    serve.add_argument("--config", type=Path, default=None, help="TOML config file")
    serve.add_argument("--host", default=None, help="overrides server.host")
    serve.add_argument("--port", type=int, default=None, help="overrides server.port")
    serve.add_argument("--workers", type=int, default=None, help="overrides server.workers")
    # A child of `serve --workers N` (proxy/serving/workers.py), given its parent's pid.
    serve.add_argument("--worker-of", type=int, default=None, help=argparse.SUPPRESS)
    jobs = commands.add_parser("worker", help="run video jobs only, with no HTTP listener")
    jobs.add_argument("--config", type=Path, default=None, help="TOML config file")
    _add_auth_commands(commands)
    args = parser.parse_args(argv)
    try:
        if args.command == "token":
            return _new_token(args.name, args.grant)
        if args.command == "signing-key":
            return _new_signing_key(args.id)
        if args.command == "sign":
            return _sign(args)
        config = load_config(args.config)
        if args.command == "serve" and args.workers is not None and args.workers < 1:
            raise UsageError(f"--workers: at least 1, got {args.workers}")
    except (ConfigError, UsageError) as exc:
        return _refused(exc)
    logs.configure(config.log)
    if args.command == "worker":
        return _run(worker.work(config))
    host = args.host or config.server.host
    port = config.server.port if args.port is None else args.port
    count = config.server.workers if args.workers is None else args.workers
    if config.auth is None and not _is_loopback(host):
        return _refused(StartError(NO_AUTH.format(host=host or "every address")))
    if args.worker_of is not None:
        return _run(process.serve(config, host, port, reuse_port=True, parent=args.worker_of))
    if count > 1:
        return _run(workers.supervise(args.config, host, port, count))
    return _run(process.serve(config, host, port))


def _refused(exc: Exception) -> int:
    print(f"stream-proxy: {exc}", file=sys.stderr)
    return 2


def _run(main: Coroutine[Any, Any, int | None]) -> int:
    """Run a command's coroutine: its exit status (0 when it returns none)."""
    try:
        return asyncio.run(main) or 0
    except StartError as exc:
        return _refused(exc)
    except KeyboardInterrupt:
        return 0  # before the signal handlers were set


def _is_loopback(host: str) -> bool:
    """Whether ``host`` reaches this machine only: then an open server is safe. A name
    that does not resolve passes: listening on it fails with a message of its own."""
    if not host:
        return False  # every address
    try:
        found = socket.getaddrinfo(host, None)
    except OSError:
        return True
    return all(ipaddress.ip_address(str(info[4][0]).split("%")[0]).is_loopback for info in found)


def _add_auth_commands(commands: Any) -> None:  # argparse's subparsers action
    token = commands.add_parser("token", help="make a bearer token").add_subparsers(
        dest="what", required=True
    )
    new_token = token.add_parser("new", help="print a fresh secret, then the TOML to append to the config")
    new_token.add_argument("name", help="the token's name, as the log shows it")
    new_token.add_argument(
        "--grant", action="append", required=True, help="ACTIONS:PREFIX, e.g. read,list: or write:uploads/"
    )
    key = commands.add_parser("signing-key", help="make a key for signed URLs")
    new_key = key.add_subparsers(dest="what", required=True).add_parser(
        "new", help="print the TOML of a fresh signing key to append to the config"
    )
    new_key.add_argument("id", help="the key's id, named in every URL it signs")
    sign = commands.add_parser("sign", help="print a signed URL")
    sign.add_argument("--config", type=Path, required=True, help="TOML config file with auth.signing_keys")
    sign.add_argument("--key-id", required=True)
    sign.add_argument("--action", choices=["read", "write"], required=True)
    target = sign.add_mutually_exclusive_group(required=True)
    target.add_argument("--key", help="one object key")
    target.add_argument("--prefix", help="every key starting with this (e.g. hls/movie/)")
    sign.add_argument("--expires", type=int, required=True, help="seconds from now")
    sign.add_argument(
        "--base",
        default=None,
        help="the URL clients reach the server at, behind nginx nginx's (default: server.host and port)",
    )
    sign.add_argument("--max-size", default=None, help="write: the most bytes an upload may have")
    sign.add_argument("--content-type", default=None, help="write: the only media type allowed")
    sign.add_argument("--query", action="store_true", help="put the signature in ?sig= (default: the path)")


def _toml_string(text: str) -> str:
    # JSON's escapes are TOML's; what is checked before (no control characters) needs no other.
    return json.dumps(text, ensure_ascii=False)


def _new_token(name: str, grants: list[str]) -> int:
    if not is_token_name(name):
        raise UsageError(f"token name: 1-64 of A-Z a-z 0-9 . _ -, got {name!r}")
    try:
        parsed = [str(parse_grant(g)) for g in grants]
    except InvalidGrant as exc:
        raise UsageError(f"--grant: {exc}") from None
    secret = new_secret()
    print(secret)
    print(f"[[auth.tokens]]\nname = {_toml_string(name)}\nsha256 = {_toml_string(hash_secret(secret))}")
    print(f"grants = [{', '.join(map(_toml_string, parsed))}]")
    return 0


def _new_signing_key(key_id: str) -> int:
    if not is_key_id(key_id):
        raise UsageError(f"signing key id: 1-64 of A-Z a-z 0-9 _ -, got {key_id!r}")
    print(f"[auth.signing_keys.{key_id}]\nsecret = {_toml_string(new_signing_secret())}")
    return 0


def _sign(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    keys = config.auth.signing_keys if config.auth is not None else {}
    if args.key_id not in keys:
        raise UsageError(f"--key-id: no signing key {args.key_id!r} in auth.signing_keys of {args.config}")
    if args.expires <= 0:
        raise UsageError("--expires: a number of seconds from now, above 0")
    if args.action != "write" and (args.max_size is not None or args.content_type is not None):
        raise UsageError("--max-size and --content-type limit uploads: they go with --action write")
    try:
        target = validate_key(args.key) if args.key is not None else validate_list_prefix(args.prefix)
        max_size = None if args.max_size is None else parse_size(args.max_size)
        content_type = None if args.content_type is None else validate_media_type(args.content_type)
    except (InvalidKey, InvalidContentType, ValueError) as exc:
        raise UsageError(str(exc)) from None
    grant = SignedGrant(
        args.key_id,
        Action(args.action),
        target,
        expires=int(time.time()) + args.expires,
        prefix=args.key is None,
        max_size=max_size,
        content_type=content_type,
    )
    if args.base is None and config.server.trusted_proxies:
        # Behind a proxy, server.host:port is where the proxy reaches this server, not
        # where clients do. (The signature does not cover the base: any base works.)
        print("stream-proxy: server.trusted_proxies is set: give --base the proxy's URL", file=sys.stderr)
    base = args.base or f"http://{config.server.host}:{config.server.port}"
    print(signed_url(base, grant, keys[args.key_id].secret.encode("utf-8"), in_query=args.query))
    return 0
