"""The content type an object is stored and served with (pure).

An upload's declared type is kept unless it says nothing (absent, or the generic
``application/octet-stream`` that browsers send for any unknown file): then it is
guessed from the key's extension. An object stored without a type (S3 listings
carry none; files written by other means) is served with the same guess.

A declared type must be a media type as RFC 9110 §8.3.1 writes one, in ASCII: it
goes back out in a header of every download, so CR, LF or a stray byte in it would
break those answers. Types a browser runs or renders as a document of the origin
(HTML, SVG, XML, JavaScript, and anything that is not a media type) are "active":
served from a shared origin, they would run an uploader's script there.
"""

from __future__ import annotations

import mimetypes
import re

OCTET_STREAM = "application/octet-stream"
MAX_CONTENT_TYPE_LENGTH = 256

_TOKEN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_QUOTED = r'"(?:[\t \x21\x23-\x5b\x5d-\x7e]|\\[\t \x21-\x7e])*"'
_MEDIA_TYPE = re.compile(
    rf"(?P<type>{_TOKEN})/(?P<subtype>{_TOKEN})"
    rf"(?:[ \t]*;[ \t]*(?:{_TOKEN}=(?:{_TOKEN}|{_QUOTED}))?)*"
)
# The WHATWG's JavaScript MIME type essences, and the types browsers render as
# documents that can script the origin.
_ACTIVE = frozenset(
    {
        "text/html",
        "application/xhtml+xml",
        "image/svg+xml",
        "text/xml",
        "application/xml",
        "text/xsl",
        "multipart/x-mixed-replace",
        "application/ecmascript",
        "application/javascript",
        "application/x-ecmascript",
        "application/x-javascript",
        "text/ecmascript",
        "text/javascript",
        "text/javascript1.0",
        "text/javascript1.1",
        "text/javascript1.2",
        "text/javascript1.3",
        "text/javascript1.4",
        "text/javascript1.5",
        "text/jscript",
        "text/livescript",
        "text/x-ecmascript",
        "text/x-javascript",
    }
)


class InvalidContentType(ValueError):
    """A declared content type is not a media type; the message says why."""


def validate_media_type(text: str) -> str:
    """Return ``text`` if it is a media type (``type/subtype`` and parameters) in at
    most MAX_CONTENT_TYPE_LENGTH characters, else raise InvalidContentType."""
    if len(text) > MAX_CONTENT_TYPE_LENGTH:
        raise InvalidContentType(f"a content type is at most {MAX_CONTENT_TYPE_LENGTH} characters long")
    if not _MEDIA_TYPE.fullmatch(text):
        raise InvalidContentType("the content type is not a media type such as 'video/mp4'")
    return text


def essence(content_type: str) -> str | None:
    """``type/subtype`` in lower case, or None if ``content_type`` is no media type."""
    match = _MEDIA_TYPE.fullmatch(content_type.strip())
    if match is None:
        return None
    return f"{match['type']}/{match['subtype']}".lower()


def is_active(content_type: str) -> bool:
    """Whether a browser would run or render ``content_type`` as a document."""
    found = essence(content_type)
    return found is None or found in _ACTIVE or found.endswith("+xml")


def content_type_for(declared: str | None, key: str) -> str:
    """The type to store for an upload to ``key`` that declared ``declared``;
    InvalidContentType if ``declared`` is no media type."""
    if declared:
        validate_media_type(declared)
    if declared and declared != OCTET_STREAM:
        return declared
    return mimetypes.guess_type(key)[0] or declared or OCTET_STREAM


def served_content_type(stored: str | None, key: str) -> str:
    """The type to serve for an object stored with ``stored`` (None: none). A stored
    type that is no media type (written by other means) is not repeated."""
    if stored and essence(stored) is not None and len(stored) <= MAX_CONTENT_TYPE_LENGTH:
        return stored
    return content_type_for(None, key)


def safety_headers(content_type: str, key: str, inline_prefixes: tuple[str, ...]) -> dict[str, str]:
    """What a download of ``key`` needs so that it cannot run as a page of the origin:
    active content is an attachment, sandboxed should a browser render it anyway,
    unless its key is under one of ``inline_prefixes``."""
    if not is_active(content_type) or key.startswith(inline_prefixes):
        return {}
    return {"Content-Disposition": "attachment", "Content-Security-Policy": "sandbox"}
