"""The download measurements, rows of the table: whole-object GET throughput and
random 1 MiB range latency, through the proxy against S3 directly or nginx.

The low-level pieces they are built of (fetching a range or an object, timing it,
latency summaries, one-connection sessions) are in :mod:`bench.download`; this module
stores the object, runs the alternating rounds and makes the rows.
"""

from __future__ import annotations

import contextlib
import statistics
from collections.abc import AsyncIterator
from urllib.parse import quote

import aiohttp

from bench.context import (
    THROUGHPUT_MIN_RATIO,
    BenchContext,
    CpuMeter,
    alternating,
    size_label,
    throughput_rounds,
)
from bench.download import (
    RANGE_SIZE,
    Fetch,
    LatencySummary,
    http_fetch,
    one_connection_session,
    proxy_file_url,
    range_latencies,
    range_offsets,
    s3_fetch,
    timed_fetch,
)
from bench.nginx import run_nginx
from bench.report import Row, compared_row, mbps, throughput_row
from bench.servers import ProxyProcess, log
from bench.settings import BenchError, MiB
from bench.upload import proxy_delete, proxy_put, timed
from proxy.storage.s3.objects import READ_CHUNK

# Range requests: the proxy's median may exceed the reference's by this much.
RANGE_MEDIAN_SLACK = 0.002
DOWNLOAD_KEY = "download/object.bin"


async def alternate_downloads(
    ctx: BenchContext, name: str, size: int, proxy: Fetch, reference: Fetch, cpu: CpuMeter
) -> tuple[list[float], list[float]]:
    """Warm up each side with a ranged GET, then read the whole object ``rounds``
    times from each, alternating which goes first; returns MB/s per round of
    (proxy, reference)."""
    warmup = min(ctx.settings.warmup, size)
    if warmup:
        await proxy(0, warmup)
        await reference(0, warmup)

    async def seconds(r: int, side: str, fetch: Fetch) -> float:
        if side != "proxy":
            return await timed_fetch(fetch, None, size)
        async with cpu.measuring(size):
            return await timed_fetch(fetch, None, size)

    return await throughput_rounds(ctx, name, size, proxy, reference, seconds)


async def alternate_ranges(
    ctx: BenchContext, name: str, size: int, proxy: Fetch, reference: Fetch, server: ProxyProcess
) -> tuple[list[LatencySummary], list[LatencySummary], str]:
    """Per round, the same ``range_count`` random 1 MiB ranges from each side, one
    request after another, alternating which side goes first; returns each round's
    latency summary of (proxy, reference) and a note of the proxy's CPU per request."""
    count, rounds = ctx.settings.range_count, ctx.settings.rounds
    warm = range_offsets(size, 5, seed=-1)
    await range_latencies(proxy, warm)
    await range_latencies(reference, warm)
    cpu_ms: list[float] = []

    async def measure(r: int, side: str, fetch: Fetch) -> LatencySummary:
        before = server.cpu_seconds()
        summary = LatencySummary.of(await range_latencies(fetch, range_offsets(size, count, seed=r)))
        if side == "proxy":
            cpu_ms.append((server.cpu_seconds() - before) / count * 1000)
        log(
            f"{name} round {r + 1}/{rounds}: {side} median {summary.median * 1000:.2f} ms, "
            f"p99 {summary.p99 * 1000:.2f} ms"
        )
        return summary

    proxy_summaries, reference_summaries = await alternating(rounds, proxy, reference, measure)
    note = (
        f"proxy process CPU (user+sys) {statistics.median(cpu_ms):.2f} ms per range request "
        "(median of rounds)"
    )
    return proxy_summaries, reference_summaries, note


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f} ms"


def latency_row(
    measurement: str,
    proxy: list[LatencySummary],
    reference: list[LatencySummary],
    *,
    reference_name: str,
    notes: list[str],
) -> Row:
    """Medians over the rounds of each round's median and p99; passes when the proxy's
    median is at most RANGE_MEDIAN_SLACK above the reference's."""
    p_median = statistics.median(s.median for s in proxy)
    r_median = statistics.median(s.median for s in reference)
    p_p99 = statistics.median(s.p99 for s in proxy)
    r_p99 = statistics.median(s.p99 for s in reference)
    diff = p_median - r_median

    def per_round(summaries: list[LatencySummary]) -> list[str]:
        return [f"{s.median * 1000:.2f}/{s.p99 * 1000:.2f}" for s in summaries]

    return compared_row(
        measurement,
        f"median {_ms(p_median)}, p99 {_ms(p_p99)}",
        f"median {_ms(r_median)}, p99 {_ms(r_p99)}",
        f"median {diff * 1000:+.2f} ms (<= +{RANGE_MEDIAN_SLACK * 1000:.0f} ms); "
        f"p99 {(p_p99 - r_p99) * 1000:+.2f} ms",
        diff <= RANGE_MEDIAN_SLACK,
        reference_name=reference_name,
        unit="median/p99 ms",
        proxy_rounds=per_round(proxy),
        reference_rounds=per_round(reference),
        notes=notes,
    )


def _connections(measurement: str, sockets: dict[str, set[tuple[str, int]]]) -> str:
    counts = ", ".join(f"{side} {len(socks)}" for side, socks in sockets.items())
    return f"{measurement}: client connections used (one expected each): {counts}"


async def _store_download_object(ctx: BenchContext, name: str, server: ProxyProcess) -> int:
    """PUTs the ``download_size`` object through ``server``; returns its size."""
    size = ctx.settings.download_size
    await ctx.payload.sha256(size)
    seconds = await timed(proxy_put(ctx.http, server.url, DOWNLOAD_KEY, ctx.payload, size))
    log(f"{name}: stored {size_label(size)} through the proxy ({mbps(size, seconds):.1f} MB/s)")
    return size


@contextlib.asynccontextmanager
async def s3_download_object(ctx: BenchContext, name: str) -> AsyncIterator[tuple[ProxyProcess, int]]:
    """An S3-backend proxy and a ``download_size`` object PUT through it; deleted after."""
    async with ctx.s3_proxy(name) as server:
        size = await _store_download_object(ctx, name, server)
        try:
            yield server, size
        finally:
            await ctx.delete_s3(DOWNLOAD_KEY)


@contextlib.asynccontextmanager
async def local_download_object(ctx: BenchContext, name: str) -> AsyncIterator[tuple[ProxyProcess, str, int]]:
    """A local-backend proxy, a ``download_size`` file PUT through it and nginx serving
    the same root; yields (proxy, nginx URL of the file, size)."""
    root = ctx.workdir / "download-root"
    async with ctx.local_proxy(name, root) as server:
        size = await _store_download_object(ctx, name, server)
        path = root / DOWNLOAD_KEY
        if path.stat().st_size != size:
            raise BenchError(f"{path} has {path.stat().st_size} bytes, not {size}")
        try:
            async with run_nginx(root) as nginx:
                yield server, f"{nginx.url}/{quote(DOWNLOAD_KEY)}", size
        finally:
            await proxy_delete(ctx.http, server.url, DOWNLOAD_KEY)


async def download_throughput(
    ctx: BenchContext,
    name: str,
    backend: str,
    server: ProxyProcess,
    size: int,
    reference: Fetch,
    *,
    reference_name: str,
) -> list[Row]:
    """The whole ``size`` object read by GET /files/{key} through ``server`` vs by
    ``reference``, by :func:`alternate_downloads`; its row."""
    cpu = CpuMeter(server)
    proxy = http_fetch(ctx.http, proxy_file_url(server.url, DOWNLOAD_KEY))
    proxy_rates, reference_rates = await alternate_downloads(ctx, name, size, proxy, reference, cpu)
    measurement = f"{backend} download {size_label(size)}"
    return [
        throughput_row(
            measurement,
            proxy_rates,
            reference_rates,
            min_ratio=THROUGHPUT_MIN_RATIO,
            reference_name=reference_name,
            notes=[cpu.note(measurement, "downloaded")],
        )
    ]


async def s3_download(ctx: BenchContext) -> list[Row]:
    """GET /files/{key} through the proxy (S3 backend) vs a direct aioboto3 GetObject
    of the same object, both read to the end and discarded."""
    async with s3_download_object(ctx, "s3-download") as (server, size):
        return await download_throughput(
            ctx,
            "s3-download",
            "S3",
            server,
            size,
            s3_fetch(ctx.s3_client, ctx.bucket, DOWNLOAD_KEY),
            reference_name=f"direct aioboto3 GetObject, Body.iter_chunks({READ_CHUNK // 1024} KiB) discarded",
        )


async def local_download(ctx: BenchContext) -> list[Row]:
    """GET /files/{key} through the proxy (local backend) vs nginx (sendfile) serving
    the same file, both read to the end by the same aiohttp client."""
    async with local_download_object(ctx, "local-download") as (server, nginx_url, size):
        return await download_throughput(
            ctx,
            "local-download",
            "local",
            server,
            size,
            http_fetch(ctx.http, nginx_url),
            reference_name="nginx (sendfile on, 1 worker) serving the same file from the same root",
        )


async def range_latency(
    ctx: BenchContext,
    name: str,
    backend: str,
    server: ProxyProcess,
    size: int,
    proxy_session: aiohttp.ClientSession,
    reference: Fetch,
    sockets: dict[str, set[tuple[str, int]]],
    *,
    reference_name: str,
) -> list[Row]:
    """Random ranges of the ``size`` object through ``server`` on ``proxy_session`` vs
    from ``reference``, by :func:`alternate_ranges`; its row. ``sockets``: the client
    addresses each side used, "proxy" filled here."""
    proxy = http_fetch(proxy_session, proxy_file_url(server.url, DOWNLOAD_KEY), sockets["proxy"])
    proxy_lat, reference_lat, cpu = await alternate_ranges(ctx, name, size, proxy, reference, server)
    ranges = f"{ctx.settings.range_count} x {RANGE_SIZE // MiB} MiB ranges"
    measurement = f"{backend} {ranges} of {size_label(size)}"
    return [
        latency_row(
            measurement,
            proxy_lat,
            reference_lat,
            reference_name=reference_name,
            notes=[f"{measurement}: {cpu}", _connections(measurement, sockets)],
        )
    ]


async def s3_range_latency(ctx: BenchContext) -> list[Row]:
    """Random 1 MiB ranges, one after another on one keep-alive connection: through
    the proxy (S3 backend) vs direct ranged GetObjects on a one-connection client."""
    sockets: dict[str, set[tuple[str, int]]] = {"proxy": set()}
    single = ctx.s3.s3_config(ctx.bucket, max_pool_connections=1)
    async with (
        s3_download_object(ctx, "s3-range") as (server, size),
        one_connection_session() as session,
        ctx.s3.client(single) as client,
    ):
        return await range_latency(
            ctx,
            "s3-range",
            "S3",
            server,
            size,
            session,
            s3_fetch(client, ctx.bucket, DOWNLOAD_KEY),
            sockets,
            reference_name="direct aioboto3 GetObject with Range, one pooled connection",
        )


async def local_range_latency(ctx: BenchContext) -> list[Row]:
    """Random 1 MiB ranges, one after another on one keep-alive connection: through
    the proxy (local backend) vs nginx serving the same file."""
    sockets: dict[str, set[tuple[str, int]]] = {"proxy": set(), "nginx": set()}
    async with (
        local_download_object(ctx, "local-range") as (server, nginx_url, size),
        one_connection_session() as proxy_session,
        one_connection_session() as nginx_session,
    ):
        return await range_latency(
            ctx,
            "local-range",
            "local",
            server,
            size,
            proxy_session,
            http_fetch(nginx_session, nginx_url, sockets["nginx"]),
            sockets,
            reference_name="nginx (sendfile on, 1 worker) serving the same file",
        )
