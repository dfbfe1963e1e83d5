"""The tus 1.0.0 resumable upload protocol's header rules: pure functions, no I/O.

https://tus.io/protocols/resumable-upload . Every parser raises TusHeaderError with
a message fit for the client; the handler turns it into a 400.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import re
from dataclasses import dataclass
from urllib.parse import quote, urlsplit

from proxy.rules.keys import InvalidKey, sanitize_filename, validate_key

TUS_VERSION = "1.0.0"
SUPPORTED_VERSIONS = (TUS_VERSION,)
EXTENSIONS = (
    "creation",
    "creation-with-upload",
    "creation-defer-length",
    "termination",
    "expiration",
    "checksum",
    "concatenation",
)
CHECKSUM_ALGORITHMS = ("sha1", "sha256", "md5")
OFFSET_CONTENT_TYPE = "application/offset+octet-stream"
# Larger than any object S3 or a file system will take, small enough to parse cheaply.
_MAX_DIGITS = 19
_METADATA_KEY = re.compile(r"[^\s,]+")
_DIGITS = re.compile(r"[0-9]+")
_TEMPLATE_FIELDS = re.compile(r"\{(\w*)\}")
TEMPLATE_NAMES = ("id", "filename")
# A final names at most this many partials, in a header of at most this many
# characters: enough for any client (tus-js-client sends one URL per parallel
# upload), few enough that checking and locking them stays cheap. In practice the
# request head's 8 KiB limit (server.py) caps it first, at about 190 paths.
MAX_PARTIALS = 1000
MAX_CONCAT_HEADER = 64 * 1024
# What names an upload in a final's URL: its id after /uploads/, whatever comes
# before (a scheme and host, a signed path /s/<signature>, a proxy's prefix).
_PARTIAL_PATH = re.compile(r"(?:^|/)uploads/([0-9a-f]{32})/?\Z")


class TusHeaderError(ValueError):
    """A tus header is malformed; the message says which and why."""


@dataclass(frozen=True)
class Checksum:
    algorithm: str
    digest: bytes


def parse_uint(value: str | None, header: str) -> int | None:
    """A non-negative decimal header (Upload-Offset, Upload-Length); None if absent."""
    if value is None:
        return None
    text = value.strip()
    if not _DIGITS.fullmatch(text) or len(text) > _MAX_DIGITS:
        raise TusHeaderError(f"{header} must be a non-negative integer, got {value!r}")
    return int(text)


def parse_defer_length(value: str | None) -> bool:
    if value is None:
        return False
    if value.strip() != "1":
        raise TusHeaderError(f"Upload-Defer-Length must be 1, got {value!r}")
    return True


def parse_metadata(value: str | None) -> dict[str, bytes | None]:
    """Upload-Metadata: comma-separated ``key base64value`` pairs (the value may be left out)."""
    if value is None or not value.strip():
        return {}
    result: dict[str, bytes | None] = {}
    for pair in value.split(","):
        fields = pair.strip().split(" ")
        key = fields[0]
        if not _METADATA_KEY.fullmatch(key) or len(fields) > 2:
            raise TusHeaderError(f"Upload-Metadata has a malformed pair: {pair.strip()!r}")
        if key in result:
            raise TusHeaderError(f"Upload-Metadata repeats the key {key!r}")
        result[key] = _b64decode(fields[1], f"Upload-Metadata value of {key!r}") if len(fields) == 2 else None
    return result


def metadata_text(metadata: dict[str, bytes | None], name: str) -> str | None:
    """A metadata value as text, or None if absent, empty or not UTF-8."""
    value = metadata.get(name)
    if not value:
        return None
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return None


def parse_checksum(value: str | None) -> Checksum | None:
    """Upload-Checksum: ``<algorithm> <base64 digest>``."""
    if value is None:
        return None
    fields = value.strip().split(" ")
    if len(fields) != 2:
        raise TusHeaderError(f"Upload-Checksum must be '<algorithm> <base64 digest>', got {value!r}")
    algorithm = fields[0].lower()
    if algorithm not in CHECKSUM_ALGORITHMS:
        supported = ", ".join(CHECKSUM_ALGORITHMS)
        raise TusHeaderError(
            f"Upload-Checksum algorithm {fields[0]!r} is not supported; use one of {supported}"
        )
    digest = _b64decode(fields[1], "Upload-Checksum digest")
    if len(digest) != hashlib.new(algorithm).digest_size:
        raise TusHeaderError(f"Upload-Checksum digest is {len(digest)} bytes, not a {algorithm} digest")
    return Checksum(algorithm, digest)


def _b64decode(text: str, what: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise TusHeaderError(f"{what} is not valid base64") from None


def validate_key_template(template: str) -> str:
    """A template names only {id} and {filename}, and gives a valid key for a plain name."""
    for name in _TEMPLATE_FIELDS.findall(template):
        if name not in TEMPLATE_NAMES:
            raise ValueError(f"unknown field {{{name}}}; use {{id}} and {{filename}}")
    if "{id}" not in template and "{filename}" not in template:
        raise ValueError("must contain {id} or {filename}, or every upload would get the same key")
    validate_key(template.replace("{id}", "0" * 32).replace("{filename}", "f"))
    return template


def object_key_for(template: str, upload_id: str, filename: str | None) -> str:
    """The key a finished upload is stored under. Without a usable filename the
    upload's id stands in for it."""
    name = upload_id
    if filename:
        with contextlib.suppress(InvalidKey):
            name = sanitize_filename(filename)
    return validate_key(template.replace("{id}", upload_id).replace("{filename}", name))


def upload_location(base: str, upload_id: str) -> str:
    return f"{base.rstrip('/')}/{quote(upload_id, safe='')}"


@dataclass(frozen=True)
class Concat:
    """What an Upload-Concat header asks for: a partial upload, or the final one made
    of ``partials`` (upload ids, in order)."""

    partials: tuple[str, ...] = ()

    @property
    def final(self) -> bool:
        return bool(self.partials)

    def header(self, base: str) -> str:
        """The header as HEAD answers it, the partials named by their paths."""
        if not self.final:
            return "partial"
        return "final;" + " ".join(upload_location(base, upload_id) for upload_id in self.partials)


def parse_concat(value: str | None) -> Concat | None:
    """Upload-Concat: ``partial``, or ``final;<url> <url> ...`` naming each partial by
    an absolute URL or a path ending in ``/uploads/<id>``; None if absent. A partial
    named twice is refused: the spec allows it, but it is never what a client means."""
    if value is None:
        return None
    if len(value) > MAX_CONCAT_HEADER:
        raise TusHeaderError(f"Upload-Concat is longer than {MAX_CONCAT_HEADER} characters")
    text = value.strip()
    if text == "partial":
        return Concat()
    kind, sep, urls = text.partition(";")
    if kind.strip() != "final" or not sep:
        raise TusHeaderError("Upload-Concat must be 'partial' or 'final;<url> <url> ...'")
    names = urls.split()
    if not names:
        raise TusHeaderError("Upload-Concat: final names no partial uploads")
    if len(names) > MAX_PARTIALS:
        raise TusHeaderError(f"Upload-Concat: final names more than {MAX_PARTIALS} partial uploads")
    ids = tuple(_partial_id(name) for name in names)
    if len(set(ids)) != len(ids):
        raise TusHeaderError("Upload-Concat: final names a partial upload more than once")
    return Concat(ids)


def _partial_id(url: str) -> str:
    try:
        path = urlsplit(url).path
    except ValueError:
        path = ""
    found = _PARTIAL_PATH.search(path)
    # A comma is no separator here: "a,b" names no partial, rather than b alone.
    if found is None or "," in url:
        raise TusHeaderError(f"Upload-Concat: {url[:100]!r} is not the URL of an upload")
    return found.group(1)
