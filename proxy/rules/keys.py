"""Object key rules: pure functions, no I/O.

A key is what follows ``/files/`` in a URL and is also a relative path under the
local root, so the rules are those that make both safe at once.
"""

from __future__ import annotations

import unicodedata

MAX_KEY_BYTES = 1024
# The backends keep their own files (upload state, temporary bytes) under this first
# segment, in the same directory or bucket as the objects, so no key may use it.
INTERNAL_PREFIX = ".stream-proxy"
_RESERVED_FILENAMES = {"", ".", ".."}


class InvalidKey(ValueError):
    """The key cannot name an object; the message says why."""


def validate_key(key: str) -> str:
    """Return ``key`` unchanged if it is a valid object key, else raise InvalidKey."""
    if not key:
        raise InvalidKey("key is empty")
    try:
        encoded = key.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidKey("key is not valid UTF-8") from None
    if len(encoded) > MAX_KEY_BYTES:
        raise InvalidKey(f"key is {len(encoded)} bytes long; at most {MAX_KEY_BYTES} are allowed")
    if key.startswith("/"):
        raise InvalidKey("key must not start with '/'")
    if "\\" in key:
        raise InvalidKey("key must not contain a backslash")
    for ch in key:
        if unicodedata.category(ch) == "Cc":
            raise InvalidKey(f"key must not contain control character U+{ord(ch):04X}")
    for segment in key.split("/"):
        if segment in ("", ".", ".."):
            raise InvalidKey(f"key must not contain an empty, '.' or '..' segment: {key!r}")
    if key.split("/", 1)[0] == INTERNAL_PREFIX:
        raise InvalidKey(f"keys under {INTERNAL_PREFIX}/ are reserved")
    return key


def validate_prefix(prefix: str) -> str:
    """A prefix is empty or a valid key followed by '/'."""
    if prefix == "":
        return prefix
    if not prefix.endswith("/"):
        raise InvalidKey("prefix must end with '/'")
    validate_key(prefix[:-1])
    return prefix


def sanitize_filename(filename: str) -> str:
    """Reduce a client-supplied filename to a safe single key segment.

    Browsers send a basename, but other clients send full paths (Windows ones with
    backslashes), so only the last component is kept; control characters are dropped
    and a name that is then empty or a dot name is refused.
    """
    base = filename.replace("\\", "/").rsplit("/", 1)[-1]
    cleaned = "".join(ch for ch in base if unicodedata.category(ch) != "Cc").strip()
    if cleaned in _RESERVED_FILENAMES:
        raise InvalidKey(f"filename {filename!r} has no usable name")
    return cleaned
