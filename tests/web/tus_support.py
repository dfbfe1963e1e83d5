"""A real tus client (tuspy) for the tests that upload through it."""

from __future__ import annotations

import io
from typing import Any

from tusclient.client import TusClient

METADATA = {"filename": "movie.mp4", "filetype": "video/mp4"}


def tuspy_upload(
    endpoint: str,
    data: bytes,
    chunk: int,
    url: str | None = None,
    headers: dict[str, str] | None = None,
    **options: Any,
) -> str:
    """Upload (or resume, given the upload's ``url``) with tuspy, which is synchronous:
    run it in a thread. Returns the upload's URL as the client saw it."""
    uploader = TusClient(endpoint, headers=headers).uploader(
        file_stream=io.BytesIO(data), chunk_size=chunk, metadata=METADATA, url=url, **options
    )
    uploader.upload()
    assert uploader.url is not None
    return str(uploader.url)
