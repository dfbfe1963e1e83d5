"""A tus upload as a client does it: create, then one PATCH per chunk."""

from __future__ import annotations

import base64
from urllib.parse import unquote

import aiohttp

from bench.payload import Payload
from bench.settings import BenchError

TUS = {"Tus-Resumable": "1.0.0"}


async def tus_upload(
    session: aiohttp.ClientSession, base_url: str, name: str, payload: Payload, size: int, chunk: int
) -> str:
    """Upload ``size`` bytes in PATCHes of ``chunk`` bytes; returns the object's key,
    after checking that the object is there with every byte."""
    filename = base64.b64encode(name.encode()).decode()
    headers = {**TUS, "Upload-Length": str(size), "Upload-Metadata": f"filename {filename}"}
    async with session.post(f"{base_url}/uploads/", headers=headers) as response:
        if response.status != 201:
            raise BenchError(f"tus create: HTTP {response.status}: {(await response.text())[:500]}")
        location = response.headers["Location"]
    offset = 0
    object_location = ""
    while offset < size:
        data = payload.slice(offset, min(chunk, size - offset))
        headers = {**TUS, "Content-Type": "application/offset+octet-stream", "Upload-Offset": str(offset)}
        async with session.patch(base_url + location, data=data, headers=headers) as response:
            if response.status != 204:
                text = (await response.text())[:500]
                raise BenchError(f"tus PATCH at {offset}: HTTP {response.status}: {text}")
            offset = int(response.headers["Upload-Offset"])
            object_location = response.headers.get("Object-Location", "")
    if not object_location:
        raise BenchError("the last tus PATCH did not name the stored object")
    async with session.head(base_url + object_location) as response:
        stored = response.headers.get("Content-Length")
    if stored != str(size):
        raise BenchError(f"tus upload stored {stored} bytes, not {size}")
    return unquote(object_location.removeprefix("/files/"))
