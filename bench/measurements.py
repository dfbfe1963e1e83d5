"""Measurement functions: each takes the BenchContext and returns table rows.

This module holds the upload rows (PUT and tus throughput, peak RSS of one upload)
and MEASUREMENTS, the registry of every row of this package's modules in the order
run: the download and range-latency rows are in :mod:`bench.download_rows`, the
concurrent-upload RSS row in :mod:`bench.memory`; what they all share (BenchContext,
the alternating rounds, CpuMeter) in :mod:`bench.context`.

To add one (download throughput, range latency, tus upload, ...), write an
``async def name(ctx: BenchContext) -> list[Row]`` and add it to MEASUREMENTS.
It should delete what it stores; the bucket is emptied after every measurement anyway.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from bench.context import (
    THROUGHPUT_MIN_RATIO,
    BenchContext,
    CpuMeter,
    Transfer,
    alternate,
    size_label,
)
from bench.download_rows import local_download, local_range_latency, s3_download, s3_range_latency
from bench.memory import RSS_SAMPLE_SECONDS, RssSampler, s3_concurrent_rss
from bench.report import Row, mbps, mib, throughput_row
from bench.servers import ProxyProcess, log
from bench.settings import MiB
from bench.tus import tus_upload
from bench.upload import (
    direct_multipart_upload,
    plain_file_write,
    proxy_delete,
    proxy_put,
    timed,
)

RSS_LIMIT = 150 * MiB
# "About the same" peak RSS for a larger upload: at most this times the smaller one's.
RSS_GROWTH_LIMIT = 1.15


Timer = Callable[[str, int, bool], Awaitable[float]]


def timed_proxy_put(
    ctx: BenchContext, server: ProxyProcess, cpu: CpuMeter, delete: Callable[[str], Awaitable[None]]
) -> Timer:
    """A timer for one PUT through the proxy, which then deletes what it stored."""

    async def via_proxy(key: str, size: int, warmup: bool) -> float:
        async with cpu.measuring(size, record=not warmup):
            seconds = await timed(proxy_put(ctx.http, server.url, key, ctx.payload, size))
        await delete(key)
        return seconds

    return via_proxy


async def upload_throughput(
    ctx: BenchContext,
    name: str,
    backend: str,
    server: ProxyProcess,
    delete: Callable[[str], Awaitable[None]],
    reference: Transfer,
    *,
    min_ratio: float | None,
    reference_name: str,
) -> list[Row]:
    """PUTs through ``server`` (each stored key then removed by ``delete``) vs
    ``reference``, by :func:`alternate`; its row."""
    cpu = CpuMeter(server)
    via_proxy = timed_proxy_put(ctx, server, cpu, delete)
    proxy_rates, reference_rates = await alternate(ctx, name, via_proxy, reference)
    measurement = f"{backend} upload {size_label(ctx.settings.size)}"
    return [
        throughput_row(
            measurement,
            proxy_rates,
            reference_rates,
            min_ratio=min_ratio,
            reference_name=reference_name,
            notes=[cpu.note(measurement)],
        )
    ]


async def s3_upload(ctx: BenchContext) -> list[Row]:
    """PUT through the proxy (S3 backend) vs a direct multipart upload, same part
    size and parts in flight, from this process to the same server."""
    s = ctx.settings

    async def direct(key: str, size: int, warmup: bool) -> float:
        seconds = await timed(
            direct_multipart_upload(
                ctx.s3_client,
                ctx.bucket,
                key,
                ctx.payload,
                size,
                part_size=s.part_size,
                concurrency=s.concurrency,
            )
        )
        await ctx.delete_s3(key)
        return seconds

    async with ctx.s3_proxy("s3-upload") as server:
        return await upload_throughput(
            ctx,
            "s3-upload",
            "S3",
            server,
            ctx.delete_s3,
            direct,
            min_ratio=THROUGHPUT_MIN_RATIO,
            reference_name=(
                f"direct aioboto3 multipart upload, {s.part_size // MiB} MiB parts, {s.concurrency} in flight"
            ),
        )


async def local_upload(ctx: BenchContext) -> list[Row]:
    """PUT through the proxy (local backend) vs writing the file in a plain loop."""
    root, plain = ctx.workdir / "local-root", ctx.workdir / "plain"
    plain.mkdir(exist_ok=True)

    async def direct(key: str, size: int, warmup: bool) -> float:
        path = plain / key.replace("/", "_")
        seconds = await timed(asyncio.to_thread(plain_file_write, path, ctx.payload, size))
        path.unlink()
        return seconds

    async with ctx.local_proxy("local-upload", root) as server:
        return await upload_throughput(
            ctx,
            "local-upload",
            "local",
            server,
            lambda key: proxy_delete(ctx.http, server.url, key),
            direct,
            # No target in the issue: the reference writes from memory with no HTTP,
            # while the proxy shares the cores with the benchmark's own client.
            min_ratio=None,
            reference_name="open + write 8 MiB blocks + fsync + close, same filesystem",
        )


async def tus_upload_throughput(
    ctx: BenchContext, name: str, backend: str, server: ProxyProcess, delete: Callable[[str], Awaitable[None]]
) -> list[Row]:
    """A tus upload in ``tus_chunk`` PATCHes vs one PUT of the same bytes, both through
    ``server``; the issue names no target, so the row only informs."""
    size, chunk = ctx.settings.tus_size, ctx.settings.tus_chunk
    cpu = CpuMeter(server)

    async def via_tus(key: str, size: int, warmup: bool) -> float:
        async with cpu.measuring(size, record=not warmup):
            start = time.perf_counter()
            stored = await tus_upload(ctx.http, server.url, key.replace("/", "-"), ctx.payload, size, chunk)
            seconds = time.perf_counter() - start
        await delete(stored)
        return seconds

    via_put = timed_proxy_put(ctx, server, CpuMeter(server), delete)
    tus_rates, put_rates = await alternate(ctx, name, via_tus, via_put, size)
    measurement = f"{backend} tus upload {size_label(size)}, {chunk // MiB} MiB PATCHes"
    return [
        throughput_row(
            measurement,
            tus_rates,
            put_rates,
            min_ratio=None,
            reference_name=f"one PUT of {size_label(size)} through the same proxy",
            notes=[cpu.note(measurement)],
        )
    ]


async def s3_tus_upload(ctx: BenchContext) -> list[Row]:
    async with ctx.s3_proxy("s3-tus-upload") as server:
        return await tus_upload_throughput(ctx, "s3-tus-upload", "S3", server, ctx.delete_s3)


async def local_tus_upload(ctx: BenchContext) -> list[Row]:
    async with ctx.local_proxy("local-tus-upload", ctx.workdir / "tus-root") as server:
        return await tus_upload_throughput(
            ctx, "local-tus-upload", "local", server, lambda key: proxy_delete(ctx.http, server.url, key)
        )


async def proxy_rss(ctx: BenchContext) -> list[Row]:
    """Peak RSS of a fresh S3-backend proxy process over one upload of each size
    (VmHWM cannot be reset, hence one process per size)."""
    rows: list[Row] = []
    first_peak: int | None = None
    for size in ctx.settings.rss_sizes:
        async with ctx.s3_proxy(f"rss-{size // MiB}mib") as server:
            idle = server.rss()
            sampler = RssSampler(server)
            key = f"rss/{size // MiB}mib"
            await ctx.payload.sha256(size)  # proxy_put checks it: compute it before the timing
            async with sampler.running():
                seconds = await timed(proxy_put(ctx.http, server.url, key, ctx.payload, size))
            # VmHWM is updated lazily; a sample can be a little above it.
            peak = max(server.peak_rss(), sampler.max)
            await ctx.delete_s3(key)
        log(
            f"proxy RSS {size_label(size)}: idle {mib(idle)}, peak {mib(peak)}, "
            f"sampled max {mib(sampler.max)}"
        )
        target = f"< {RSS_LIMIT // MiB} MiB"
        passed = peak < RSS_LIMIT
        if first_peak is None:
            first_peak, first_size = peak, size
        else:
            growth = peak / first_peak
            target = f"{growth:.2f}x of {size_label(first_size)} peak ({target}, <= {RSS_GROWTH_LIMIT:.2f}x)"
            passed = passed and growth <= RSS_GROWTH_LIMIT
        rows.append(
            Row(
                f"proxy peak RSS, {size_label(size)} S3 upload",
                f"{mib(peak)}",
                f"idle {mib(idle)}",
                target,
                passed,
                notes=(
                    f"peak RSS {size_label(size)}: max of VmHWM after the upload and VmRSS sampled every "
                    f"{RSS_SAMPLE_SECONDS * 1000:.0f} ms (max {mib(sampler.max)}) "
                    f"({sampler.samples} samples); upload ran at {mbps(size, seconds):.1f} MB/s",
                ),
            )
        )
    return rows


Measurement = Callable[[BenchContext], Awaitable[list[Row]]]

# Run in this order; BENCH_ONLY selects by name.
MEASUREMENTS: dict[str, Measurement] = {
    "s3_upload": s3_upload,
    "local_upload": local_upload,
    "s3_tus_upload": s3_tus_upload,
    "local_tus_upload": local_tus_upload,
    "proxy_rss": proxy_rss,
    "s3_concurrent_rss": s3_concurrent_rss,
    "s3_download": s3_download,
    "local_download": local_download,
    "s3_range_latency": s3_range_latency,
    "local_range_latency": local_range_latency,
}
