"""Measurement functions: each takes the BenchContext and returns table rows.

To add one (download throughput, range latency, tus upload, ...), write an
``async def name(ctx: BenchContext) -> list[Row]`` and add it to MEASUREMENTS.
It should delete what it stores; the bucket is emptied after every measurement anyway.
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

import aiohttp

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
from bench.memory import RSS_SAMPLE_SECONDS, RssSampler, s3_concurrent_rss
from bench.nginx import run_nginx
from bench.payload import Payload
from bench.report import Row, compared_row, mbps, mib, throughput_row
from bench.servers import (
    ProxyProcess,
    S3Endpoint,
    local_storage_tables,
    log,
    run_proxy,
    s3_storage_tables,
)
from bench.settings import BenchError, MiB, Settings
from bench.tus import tus_upload
from bench.upload import (
    direct_multipart_upload,
    plain_file_write,
    proxy_delete,
    proxy_put,
    timed,
)
from proxy.config import ByteSize, S3Config
from proxy.storage.s3.objects import READ_CHUNK

THROUGHPUT_MIN_RATIO = 0.9
# Range requests: the proxy's median may exceed the reference's by this much.
RANGE_MEDIAN_SLACK = 0.002
RSS_LIMIT = 150 * MiB
# "About the same" peak RSS for a larger upload: at most this times the smaller one's.
RSS_GROWTH_LIMIT = 1.15


@dataclass
class BenchContext:
    settings: Settings
    s3: S3Endpoint
    s3_client: Any  # aiobotocore S3 client, configured as the proxy's
    bucket: str
    workdir: Path
    payload: Payload
    http: aiohttp.ClientSession
    _names: dict[str, int] = field(default_factory=dict)

    def s3_config(self) -> S3Config:
        """The proxy's S3 backend settings."""
        return self.s3.s3_config(
            self.bucket,
            part_size=ByteSize(self.settings.part_size),
            max_concurrency=self.settings.concurrency,
        )

    def _unique(self, name: str) -> str:
        self._names[name] = self._names.get(name, 0) + 1
        return name if self._names[name] == 1 else f"{name}-{self._names[name]}"

    def s3_proxy(self, name: str) -> contextlib.AbstractAsyncContextManager[ProxyProcess]:
        """A new proxy process with the S3 backend on the benchmark bucket."""
        return run_proxy(self._unique(name), self.workdir, s3_storage_tables(self.s3_config()), self.s3)

    def local_proxy(self, name: str, root: Path) -> contextlib.AbstractAsyncContextManager[ProxyProcess]:
        """A new proxy process with the local backend under ``root``."""
        return run_proxy(self._unique(name), self.workdir, local_storage_tables(root))

    async def delete_s3(self, key: str) -> None:
        await self.s3_client.delete_object(Bucket=self.bucket, Key=key)


# A timed transfer of (key, size, warmup); returns seconds and cleans up after itself.
Transfer = Callable[[str, int, bool], Awaitable[float]]

S = TypeVar("S")
R = TypeVar("R")


async def alternating(
    rounds: int, proxy: S, reference: S, measure: Callable[[int, str, S], Awaitable[R]]
) -> tuple[list[R], list[R]]:
    """``measure(round, side, proxy or reference)`` for each side ``rounds`` times,
    alternating which side goes first (the proxy in even rounds); returns the results
    per round of (proxy, reference)."""
    results: dict[str, list[R]] = {"proxy": [], "reference": []}
    for r in range(rounds):
        order = [("proxy", proxy), ("reference", reference)]
        if r % 2:
            order.reverse()
        for side, what in order:
            results[side].append(await measure(r, side, what))
    return results["proxy"], results["reference"]


async def throughput_rounds(
    ctx: BenchContext,
    name: str,
    size: int,
    proxy: S,
    reference: S,
    seconds: Callable[[int, str, S], Awaitable[float]],
) -> tuple[list[float], list[float]]:
    """``seconds(round, side, proxy or reference)`` to move ``size`` bytes, by
    :func:`alternating`; logs and returns MB/s per round of (proxy, reference)."""

    async def measure(r: int, side: str, what: S) -> float:
        rate = mbps(size, await seconds(r, side, what))
        log(f"{name} round {r + 1}/{ctx.settings.rounds}: {side} {rate:.1f} MB/s")
        return rate

    return await alternating(ctx.settings.rounds, proxy, reference, measure)


async def alternate(
    ctx: BenchContext, name: str, proxy: Transfer, reference: Transfer, size: int | None = None
) -> tuple[list[float], list[float]]:
    """Warm up each side once, then move ``size`` bytes (default: the upload size)
    ``rounds`` times on both, alternating which goes first; returns MB/s per round of
    (proxy, reference)."""
    size = ctx.settings.size if size is None else size
    warmup = ctx.settings.warmup
    await ctx.payload.sha256(size)  # computed once, outside any timing
    if warmup:
        await proxy(f"{name}/warmup-proxy", warmup, True)
        await reference(f"{name}/warmup-reference", warmup, True)

    async def seconds(r: int, side: str, transfer: Transfer) -> float:
        return await transfer(f"{name}/r{r}-{side}", size, False)

    return await throughput_rounds(ctx, name, size, proxy, reference, seconds)


class CpuMeter:
    """CPU seconds a proxy process spends per GiB over the transfers it times."""

    def __init__(self, proxy: ProxyProcess) -> None:
        self._proxy = proxy
        self.per_gib: list[float] = []

    @contextlib.asynccontextmanager
    async def measuring(self, size: int, record: bool = True) -> AsyncIterator[None]:
        before = self._proxy.cpu_seconds()
        yield
        if record:
            self.per_gib.append((self._proxy.cpu_seconds() - before) / (size / (1024 * MiB)))

    def note(self, measurement: str, verb: str = "uploaded") -> str:
        if not self.per_gib:
            return f"{measurement}: no proxy CPU measured"
        return (
            f"{measurement}: proxy process CPU (user+sys) {statistics.median(self.per_gib):.2f} s per GiB "
            f"{verb} (median)"
        )


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


def _size(n: int) -> str:
    return f"{n // MiB} MiB" if n % (1024 * MiB) else f"{n // (1024 * MiB)} GiB"


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
    measurement = f"{backend} upload {_size(ctx.settings.size)}"
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
    measurement = f"{backend} tus upload {_size(size)}, {chunk // MiB} MiB PATCHes"
    return [
        throughput_row(
            measurement,
            tus_rates,
            put_rates,
            min_ratio=None,
            reference_name=f"one PUT of {_size(size)} through the same proxy",
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
        log(f"proxy RSS {_size(size)}: idle {mib(idle)}, peak {mib(peak)}, sampled max {mib(sampler.max)}")
        target = f"< {RSS_LIMIT // MiB} MiB"
        passed = peak < RSS_LIMIT
        if first_peak is None:
            first_peak, first_size = peak, size
        else:
            growth = peak / first_peak
            target = f"{growth:.2f}x of {_size(first_size)} peak ({target}, <= {RSS_GROWTH_LIMIT:.2f}x)"
            passed = passed and growth <= RSS_GROWTH_LIMIT
        rows.append(
            Row(
                f"proxy peak RSS, {_size(size)} S3 upload",
                f"{mib(peak)}",
                f"idle {mib(idle)}",
                target,
                passed,
                notes=(
                    f"peak RSS {_size(size)}: max of VmHWM after the upload and VmRSS sampled every "
                    f"{RSS_SAMPLE_SECONDS * 1000:.0f} ms (max {mib(sampler.max)}) "
                    f"({sampler.samples} samples); upload ran at {mbps(size, seconds):.1f} MB/s",
                ),
            )
        )
    return rows


# -- downloads -----------------------------------------------------------------

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
    log(f"{name}: stored {_size(size)} through the proxy ({mbps(size, seconds):.1f} MB/s)")
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
    measurement = f"{backend} download {_size(size)}"
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
    measurement = f"{backend} {ctx.settings.range_count} x {RANGE_SIZE // MiB} MiB ranges of {_size(size)}"
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
