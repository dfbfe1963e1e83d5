"""The content type an object is stored and served with (pure).

An upload's declared type is kept unless it says nothing (absent, or the generic
``application/octet-stream`` that browsers send for any unknown file): then it is
guessed from the key's extension. An object stored without a type (S3 listings
carry none; files written by other means) is served with the same guess.
"""

from __future__ import annotations

import mimetypes

OCTET_STREAM = "application/octet-stream"


def content_type_for(declared: str | None, key: str) -> str:
    """The type to store for an upload to ``key`` that declared ``declared``."""
    if declared and declared != OCTET_STREAM:
        return declared
    return mimetypes.guess_type(key)[0] or declared or OCTET_STREAM


def served_content_type(stored: str | None, key: str) -> str:
    """The type to serve for an object stored with ``stored`` (None: none)."""
    return stored or content_type_for(None, key)
