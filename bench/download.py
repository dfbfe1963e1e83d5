"""The downloads that get timed: GET through the proxy or from nginx with aiohttp,
GetObject straight from the S3 server with aioboto3. Bytes are counted, not kept."""

from __future__ import annotations

import math
import random
import statistics
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import aiohttp

from bench.settings import BenchError, MiB
from proxy.storage.s3.objects import READ_CHUNK

RANGE_SIZE = 1 * MiB

# One GET of (offset, length); None: the whole object. Returns the bytes received.
Fetch = Callable[[int | None, int], Awaitable[int]]


def range_header(offset: int, length: int) -> str:
    return f"bytes={offset}-{offset + length - 1}"


async def http_get(
    session: aiohttp.ClientSession, url: str, offset: int | None, length: int
) -> tuple[int, tuple[str, int] | None]:
    """GET ``url`` (a range if ``offset`` is given) read to the end; checks the status
    and byte count and returns it with the client socket's address."""
    headers = {} if offset is None else {"Range": range_header(offset, length)}
    expected_status = 200 if offset is None else 206
    async with session.get(url, headers=headers) as response:
        if response.status != expected_status:
            raise BenchError(f"GET {url}: HTTP {response.status}: {(await response.text())[:300]}")
        transport = response.connection.transport if response.connection else None
        sock = transport.get_extra_info("sockname") if transport else None
        received = 0
        async for chunk in response.content.iter_any():
            received += len(chunk)
    if received != length:
        raise BenchError(f"GET {url}: received {received} bytes, expected {length}")
    return received, sock


def http_fetch(
    session: aiohttp.ClientSession, url: str, sockets: set[tuple[str, int]] | None = None
) -> Fetch:
    """A Fetch by HTTP; adds the client address of each request to ``sockets``."""

    async def fetch(offset: int | None, length: int) -> int:
        received, sock = await http_get(session, url, offset, length)
        if sockets is not None and sock is not None:
            sockets.add(sock)
        return received

    return fetch


def proxy_file_url(base_url: str, key: str) -> str:
    return f"{base_url}/files/{quote(key)}"


def s3_fetch(client: Any, bucket: str, key: str) -> Fetch:
    """A Fetch by GetObject (with Range for a range), Body streamed by iter_chunks in
    the proxy's own read size."""

    async def fetch(offset: int | None, length: int) -> int:
        args: dict[str, Any] = {"Bucket": bucket, "Key": key}
        if offset is not None:
            args["Range"] = range_header(offset, length)
        response = await client.get_object(**args)
        body = response["Body"]
        received = 0
        try:
            async for chunk in body.iter_chunks(READ_CHUNK):
                received += len(chunk)
        finally:
            body.close()
        if received != length:
            raise BenchError(f"GetObject {key}: received {received} bytes, expected {length}")
        return received

    return fetch


@asynccontextmanager
async def one_connection_session() -> AsyncIterator[aiohttp.ClientSession]:
    """An HTTP client that keeps a single keep-alive connection."""
    connector = aiohttp.TCPConnector(limit=1, force_close=False)
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=120)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        yield session


async def timed_fetch(fetch: Fetch, offset: int | None, length: int) -> float:
    start = time.perf_counter()
    await fetch(offset, length)
    return time.perf_counter() - start


def range_offsets(object_size: int, count: int, seed: int) -> list[int]:
    """``count`` random starts of RANGE_SIZE ranges inside the object."""
    rng = random.Random(seed)
    return [rng.randrange(0, max(1, object_size - RANGE_SIZE + 1)) for _ in range(count)]


async def range_latencies(fetch: Fetch, offsets: list[int]) -> list[float]:
    """Seconds of each RANGE_SIZE request, one after another."""
    return [await timed_fetch(fetch, offset, RANGE_SIZE) for offset in offsets]


@dataclass(frozen=True)
class LatencySummary:
    median: float
    p99: float

    @classmethod
    def of(cls, seconds: list[float]) -> LatencySummary:
        ordered = sorted(seconds)
        return cls(statistics.median(ordered), nearest_rank(ordered, 0.99))


def nearest_rank(ordered: list[float], fraction: float) -> float:
    """The nearest-rank percentile ``fraction`` of the sorted ``ordered``."""
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]
