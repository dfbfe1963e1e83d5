"""Bearer tokens (pure): a secret is known to the server only by its SHA-256.

The config holds the hash, never the secret, so a leaked config file grants
nothing. Secrets are long random strings (``stream-proxy token new``), so an
unsalted fast hash is enough: there is no password to guess from it.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Generic, TypeVar

_HEX_SHA256 = re.compile(r"[0-9a-f]{64}")
# Token names appear in log lines: nothing that could forge or break one.
_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")

T = TypeVar("T")


def new_secret() -> str:
    """A fresh secret: 256 random bits, URL- and header-safe."""
    return secrets.token_urlsafe(32)


def hash_secret(secret: str) -> str:
    """The SHA-256 of a secret, in lower-case hex, as the config holds it."""
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def is_secret_hash(text: str) -> bool:
    return _HEX_SHA256.fullmatch(text) is not None


def is_token_name(text: str) -> bool:
    return _NAME.fullmatch(text) is not None


@dataclass(frozen=True)
class _Entry(Generic[T]):
    digest: bytes
    value: T


class TokenTable(Generic[T]):
    """Looks a presented secret up by its hash, comparing against every entry in
    constant time, so the time taken says nothing about how close a guess came."""

    def __init__(self, entries: Iterable[tuple[str, T]]) -> None:
        self._entries = [_Entry(bytes.fromhex(h), value) for h, value in entries]

    def __len__(self) -> int:
        return len(self._entries)

    def find(self, secret: str) -> T | None:
        digest = hashlib.sha256(secret.encode("utf-8", "surrogatepass")).digest()
        found: T | None = None
        for entry in self._entries:
            # No early exit: every entry is compared whatever matched.
            if hmac.compare_digest(digest, entry.digest):
                found = entry.value
        return found
