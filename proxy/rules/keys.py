"""Object key rules: pure functions, no I/O.

A key is what follows ``/files/`` in a URL and is also a relative path under the
local root, so the rules are those that make both safe at once. Messages never
repeat the key: it may be a name found on disk rather than one a client sent.
"""

from __future__ import annotations

import unicodedata

MAX_KEY_BYTES = 1024
# Segments are file names on the local backend, and file systems take at most 255
# bytes; the rule holds on S3 too, so that any key can move between backends.
MAX_SEGMENT_BYTES = 255
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
    _check_path_text(key, "key")
    for segment in key.split("/"):
        _check_segment(segment, "key")
    if key.split("/", 1)[0] == INTERNAL_PREFIX:
        raise InvalidKey(f"keys under {INTERNAL_PREFIX}/ are reserved")
    return key


def is_valid_key(key: str) -> bool:
    """Whether ``key`` (say, a name found on disk) can name an object."""
    try:
        validate_key(key)
    except InvalidKey:
        return False
    return True


def validate_prefix(prefix: str) -> str:
    """A folder prefix (where POST stores its files) is empty or a valid key followed by '/'."""
    if prefix == "":
        return prefix
    if not prefix.endswith("/"):
        raise InvalidKey("prefix must end with '/'")
    validate_key(prefix[:-1])
    return prefix


def validate_list_prefix(prefix: str) -> str:
    """A listing prefix: the start of some valid key, cut anywhere. Every segment it
    completes (all but the text after its last '/') must be a valid key segment, so
    that it names a place inside the storage and never outside it."""
    if prefix == "":
        return prefix
    _check_path_text(prefix, "prefix")
    *complete, last = prefix.split("/")
    for segment in complete:
        _check_segment(segment, "prefix")
    if len(last.encode("utf-8")) > MAX_SEGMENT_BYTES:
        raise InvalidKey(f"a key segment is at most {MAX_SEGMENT_BYTES} bytes long")
    if complete and complete[0] == INTERNAL_PREFIX:
        raise InvalidKey(f"keys under {INTERNAL_PREFIX}/ are reserved")
    return prefix


def is_valid_list_prefix(prefix: str) -> bool:
    """Whether some valid key starts with ``prefix`` (say, a directory found on disk,
    as its key ending in '/')."""
    try:
        validate_list_prefix(prefix)
    except InvalidKey:
        return False
    return True


def validate_cursor(cursor: str) -> str:
    """A listing cursor: the page starts after it. It is only compared with keys,
    never made into a path, so it need not be one; but it goes to S3, so it must be
    text any S3 server takes."""
    _check_text(cursor, "cursor")
    for ch in cursor:
        if unicodedata.category(ch) in ("Cs", "Cn"):
            raise InvalidKey(f"cursor must not contain the unassigned character U+{ord(ch):04X}")
    return cursor


def _check_path_text(text: str, what: str) -> None:
    _check_text(text, what)
    if text.startswith("/"):
        raise InvalidKey(f"{what} must not start with '/'")
    if "\\" in text:
        raise InvalidKey(f"{what} must not contain a backslash")


def _check_text(text: str, what: str) -> None:
    try:
        encoded = text.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidKey(f"{what} is not valid UTF-8") from None
    if len(encoded) > MAX_KEY_BYTES:
        raise InvalidKey(f"{what} is {len(encoded)} bytes long; at most {MAX_KEY_BYTES} are allowed")
    for ch in text:
        if unicodedata.category(ch) == "Cc":
            raise InvalidKey(f"{what} must not contain control character U+{ord(ch):04X}")


def _check_segment(segment: str, what: str) -> None:
    if segment in _RESERVED_FILENAMES:
        raise InvalidKey(f"{what} must not contain an empty, '.' or '..' segment")
    if len(segment.encode("utf-8")) > MAX_SEGMENT_BYTES:
        raise InvalidKey(f"a key segment is at most {MAX_SEGMENT_BYTES} bytes long")


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
