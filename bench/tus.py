"""A tus upload as a client does it: create, then one PATCH per chunk; and tus
concatenation as tus-js-client's ``parallelUploads`` does it, timed against one tus
upload and one PUT of the same bytes (the ``local_tus_concat`` and ``s3_tus_concat``
rows)."""

from __future__ import annotations

import asyncio
import base64
import itertools
import statistics
import time
from collections.abc import Awaitable, Callable
from urllib.parse import unquote

import aiohttp

from bench.context import BenchContext, CpuMeter, size_label
from bench.payload import Payload
from bench.report import Row, mbps, throughput_row
from bench.servers import ProxyProcess, log
from bench.settings import BenchError, MiB
from bench.upload import proxy_delete, proxy_put

# Partial uploads sent at once, as tus-js-client with ``parallelUploads: 4``.
PARTIALS = 4

TUS = {"Tus-Resumable": "1.0.0"}


async def tus_upload(
    session: aiohttp.ClientSession, base_url: str, name: str, payload: Payload, size: int, chunk: int
) -> str:
    """Upload ``size`` bytes in PATCHes of ``chunk`` bytes; returns the object's key,
    after checking that the object is there with every byte."""
    filename = base64.b64encode(name.encode()).decode()
    headers = {**TUS, "Upload-Length": str(size), "Upload-Metadata": f"filename {filename}"}
    location = await _create(session, base_url, headers)
    object_location = await _send(session, base_url + location, payload, 0, size, chunk)
    if not object_location:
        raise BenchError("the last tus PATCH did not name the stored object")
    return await _stored_key(session, base_url, object_location, size)


async def _create(session: aiohttp.ClientSession, base_url: str, headers: dict[str, str]) -> str:
    async with session.post(f"{base_url}/uploads/", headers=headers) as response:
        if response.status != 201:
            raise BenchError(f"tus create: HTTP {response.status}: {(await response.text())[:500]}")
        location: str = response.headers["Location"]
        return location


async def _send(
    session: aiohttp.ClientSession, url: str, payload: Payload, start: int, size: int, chunk: int
) -> str:
    """PATCH the payload's bytes ``start`` to ``start + size`` to the upload at ``url``;
    returns the last answer's Object-Location ("" if none)."""
    offset = 0
    object_location = ""
    while offset < size:
        # Streamed with its length, as proxy_put sends a PUT's body: a client reads a
        # file as it sends it (one buffer of the whole chunk would time the client's
        # copies too, of the whole file at the default chunk size).
        length = min(chunk, size - offset)
        headers = {
            **TUS,
            "Content-Type": "application/offset+octet-stream",
            "Upload-Offset": str(offset),
            "Content-Length": str(length),
        }
        data = payload.stream(length, start + offset)
        async with session.patch(url, data=data, headers=headers) as response:
            if response.status != 204:
                text = (await response.text())[:500]
                raise BenchError(f"tus PATCH at {offset}: HTTP {response.status}: {text}")
            offset = int(response.headers["Upload-Offset"])
            object_location = response.headers.get("Object-Location", "")
    return object_location


async def _stored_key(session: aiohttp.ClientSession, base_url: str, object_location: str, size: int) -> str:
    async with session.head(base_url + object_location) as response:
        stored = response.headers.get("Content-Length")
    if stored != str(size):
        raise BenchError(f"tus upload stored {stored} bytes, not {size}")
    return unquote(object_location.removeprefix("/files/"))


async def tus_concat_upload(
    session: aiohttp.ClientSession, base_url: str, name: str, payload: Payload, size: int, chunk: int
) -> tuple[str, float]:
    """``size`` bytes as PARTIALS partial uploads sent at once (each in PATCHes of
    ``chunk`` bytes), then the final naming them; returns the object's key and the
    seconds the final's creation (the assembly) took."""
    bounds = [size * n // PARTIALS for n in range(PARTIALS + 1)]

    async def partial(start: int, end: int) -> str:
        headers = {**TUS, "Upload-Concat": "partial", "Upload-Length": str(end - start)}
        location = await _create(session, base_url, headers)
        await _send(session, base_url + location, payload, start, end - start, chunk)
        return base_url + location  # absolute, as tus-js-client names them

    urls = await asyncio.gather(*(partial(a, b) for a, b in itertools.pairwise(bounds)))
    filename = base64.b64encode(name.encode()).decode()
    headers = {**TUS, "Upload-Concat": "final;" + " ".join(urls), "Upload-Metadata": f"filename {filename}"}
    started = time.perf_counter()
    async with session.post(f"{base_url}/uploads/", headers=headers) as response:
        if response.status != 201:
            raise BenchError(f"tus final: HTTP {response.status}: {(await response.text())[:500]}")
        object_location = response.headers.get("Object-Location", "")
    assembly = time.perf_counter() - started
    return await _stored_key(session, base_url, object_location, size), assembly


Timer = Callable[[str], Awaitable[float]]


async def concat_throughput(
    ctx: BenchContext, name: str, backend: str, server: ProxyProcess, delete: Callable[[str], Awaitable[None]]
) -> list[Row]:
    """PARTIALS parallel partials and their final vs one tus upload vs one PUT of the
    same ``tus_size`` bytes through ``server``, in rounds that rotate which goes
    first; rows of concatenation against each, medians. No target: they inform."""
    size, chunk = ctx.settings.tus_size, ctx.settings.tus_chunk
    cpu = CpuMeter(server)
    assembly: list[float] = []
    await ctx.payload.sha256(size)  # proxy_put's check, computed outside any timing

    async def concat(key: str) -> float:
        async with cpu.measuring(size):
            start = time.perf_counter()
            stored, final_seconds = await tus_concat_upload(
                ctx.http, server.url, key.replace("/", "-"), ctx.payload, size, chunk
            )
            seconds = time.perf_counter() - start
        assembly.append(final_seconds)
        await delete(stored)
        return seconds

    async def tus(key: str) -> float:
        start = time.perf_counter()
        stored = await tus_upload(ctx.http, server.url, key.replace("/", "-"), ctx.payload, size, chunk)
        seconds = time.perf_counter() - start
        await delete(stored)
        return seconds

    async def put(key: str) -> float:
        start = time.perf_counter()
        await proxy_put(ctx.http, server.url, key, ctx.payload, size)
        seconds = time.perf_counter() - start
        await delete(key)
        return seconds

    sides: list[tuple[str, Timer]] = [("concat", concat), ("tus", tus), ("put", put)]
    rates: dict[str, list[float]] = {side: [] for side, _ in sides}
    for r in range(ctx.settings.rounds):
        for side, timer in sides[r % 3 :] + sides[: r % 3]:
            rate = mbps(size, await timer(f"{name}/r{r}-{side}"))
            rates[side].append(rate)
            log(f"{name} round {r + 1}/{ctx.settings.rounds}: {side} {rate:.1f} MB/s")
    label = f"{size_label(size)}, {PARTIALS} partials, {chunk // MiB} MiB PATCHes"
    measurement = f"{backend} tus concatenation {label}"
    notes = [
        cpu.note(measurement),
        f"{measurement}: the final's creation (assembly, hashing, publishing) "
        f"{statistics.median(assembly):.2f} s (median)",
    ]
    return [
        throughput_row(
            measurement,
            rates["concat"],
            rates["tus"],
            min_ratio=None,
            reference_name=f"one tus upload of {size_label(size)}, same PATCHes, same proxy",
            notes=notes,
        ),
        throughput_row(
            f"{measurement}, vs PUT",
            rates["concat"],
            rates["put"],
            min_ratio=None,
            reference_name=f"one PUT of {size_label(size)} through the same proxy",
        ),
    ]


async def s3_tus_concat(ctx: BenchContext) -> list[Row]:
    async with ctx.s3_proxy("s3-tus-concat") as server:
        return await concat_throughput(ctx, "s3-tus-concat", "S3", server, ctx.delete_s3)


async def local_tus_concat(ctx: BenchContext) -> list[Row]:
    async with ctx.local_proxy("local-tus-concat", ctx.workdir / "tus-concat-root") as server:
        return await concat_throughput(
            ctx, "local-tus-concat", "local", server, lambda key: proxy_delete(ctx.http, server.url, key)
        )
