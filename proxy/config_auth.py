"""The checks of the ``[auth]`` section and the reading of its secrets, for
proxy/config.py (which defines the settings and turns a ValueError raised here
into its one-line ConfigError).

Secrets named by an environment variable or a file are read once, at start: a
token keeps only the hash of its secret, a signing key the secret itself (HMAC
needs it).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from proxy.rules.grants import InvalidGrant, parse_grant
from proxy.rules.origins import is_origin
from proxy.rules.signatures import is_key_id
from proxy.rules.tokens import hash_secret, is_secret_hash, is_token_name

if TYPE_CHECKING:
    from proxy.config import AuthConfig

MIN_SIGNING_SECRET = 32  # bytes: an HMAC key shorter than its hash is weaker than it


def check_auth(auth: AuthConfig) -> None:
    """Raise ValueError naming the first bad setting of ``auth``."""
    grants = [("auth.anonymous", g) for g in auth.anonymous]
    names: set[str] = set()
    for i, token in enumerate(auth.tokens):
        where = f"auth.tokens[{i}]"
        if not is_token_name(token.name):
            raise ValueError(f"{where}.name: 1-64 of A-Z a-z 0-9 . _ -, got {token.name!r}")
        if token.name in names:
            raise ValueError(f"{where}.name: {token.name!r} names two tokens")
        names.add(token.name)
        _one_source(where, "sha256", token.sha256, token.secret_env, token.secret_file)
        if token.sha256 and not is_secret_hash(token.sha256):
            raise ValueError(f"{where}.sha256: not a SHA-256 in lower-case hex")
        grants += [(f"{where}.grants", g) for g in token.grants]
    for where, text in grants:
        try:
            parse_grant(text)
        except InvalidGrant as exc:
            raise ValueError(f"{where}: {exc}") from None
    for key_id, key in auth.signing_keys.items():
        if not is_key_id(key_id):
            raise ValueError(f"auth.signing_keys: {key_id!r} is not 1-64 of A-Z a-z 0-9 _ -")
        where = f"auth.signing_keys.{key_id}"
        _one_source(where, "secret", key.secret, key.secret_env, key.secret_file)
        if key.secret and len(key.secret.encode("utf-8")) < MIN_SIGNING_SECRET:
            raise ValueError(f"{where}.secret: must be at least {MIN_SIGNING_SECRET} bytes")
    if not 0 <= auth.clock_skew <= 3600:
        raise ValueError("auth.clock_skew: must be 0 to 3600 seconds")
    for origin in auth.cors_origins:
        if not is_origin(origin):
            raise ValueError(f"auth.cors_origins: {origin!r} is not scheme://host[:port]")


def _one_source(where: str, inline: str, value: str, env: str, file: Path | None) -> None:
    if [bool(value), bool(env), file is not None].count(True) != 1:
        raise ValueError(f"{where}: set exactly one of {inline}, secret_env, secret_file")


def read_secrets(auth: AuthConfig, environ: Mapping[str, str]) -> AuthConfig:
    """``auth`` (checked) with the secrets of its environment variables and files
    read: tokens get their ``sha256``, signing keys their ``secret``."""
    tokens = []
    for i, token in enumerate(auth.tokens):
        if not token.sha256:
            secret = _read(f"auth.tokens[{i}]", token.secret_env, token.secret_file, environ)
            token = dataclasses.replace(token, sha256=hash_secret(secret))
        tokens.append(token)
    keys = {}
    for key_id, key in auth.signing_keys.items():
        if not key.secret:
            where = f"auth.signing_keys.{key_id}"
            key = dataclasses.replace(key, secret=_read(where, key.secret_env, key.secret_file, environ))
            if len(key.secret.encode("utf-8")) < MIN_SIGNING_SECRET:
                raise ValueError(f"{where}: the secret must be at least {MIN_SIGNING_SECRET} bytes")
        keys[key_id] = key
    return dataclasses.replace(auth, tokens=tuple(tokens), signing_keys=keys)


def _read(where: str, env: str, file: Path | None, environ: Mapping[str, str]) -> str:
    if env:
        secret = environ.get(env, "")
        if not secret:
            raise ValueError(f"{where}.secret_env: the environment variable {env} is not set")
        return secret
    assert file is not None
    try:
        # Files written by `echo` or an editor end with a newline that is no part of it.
        secret = file.read_text("utf-8").rstrip("\r\n")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise ValueError(f"{where}.secret_file: cannot read {file}: {reason}") from None
    if not secret:
        raise ValueError(f"{where}.secret_file: {file} is empty")
    return secret
