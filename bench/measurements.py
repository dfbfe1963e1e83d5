"""Measurement functions: each takes the BenchContext and returns table rows.

To add one (download throughput, range latency, tus upload, ...), write an
``async def name(ctx: BenchContext) -> list[Row]`` and add it to MEASUREMENTS.
It should delete what it stores; the bucket is emptied after every measurement anyway.
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
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
from bench.nginx import run_nginx
from bench.payload import Payload
from bench.report import Row, mbps, mib, throughput_row
from bench.servers import (
    ProxyProcess,
    S3Endpoint,
    local_storage_tables,
    log,
    run_proxy,
    s3_storage_tables,
)
from bench.settings import BenchError, MiB, Settings
from bench.upload import (
    direct_multipart_upload,
    plain_file_write,
    proxy_delete,
    proxy_put,
    timed,
)
from proxy.config import ByteSize, S3Config
from proxy.storage.s3 import READ_CHUNK

THROUGHPUT_MIN_RATIO = 0.9
# Range requests: the proxy's median may exceed the reference's by this much.
RANGE_MEDIAN_SLACK = 0.002
RSS_LIMIT = 150 * MiB
# "About the same" peak RSS for a larger upload: at most this times the smaller one's.
RSS_GROWTH_LIMIT = 1.15
RSS_SAMPLE_SECONDS = 0.05


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


async def alternate(
    ctx: BenchContext, name: str, proxy: Transfer, reference: Transfer
) -> tuple[list[float], list[float]]:
    """Warm up each side once, then run both ``rounds`` times, alternating which goes
    first; returns MB/s per round of (proxy, reference)."""
    size, rounds, warmup = ctx.settings.size, ctx.settings.rounds, ctx.settings.warmup
    await ctx.payload.sha256(size)  # computed once, outside any timing
    if warmup:
        await proxy(f"{name}/warmup-proxy", warmup, True)
        await reference(f"{name}/warmup-reference", warmup, True)
    results: dict[str, list[float]] = {"proxy": [], "reference": []}
    for r in range(rounds):
        order = [("proxy", proxy), ("reference", reference)]
        if r % 2:
            order.reverse()
        for side, transfer in order:
            rate = mbps(size, await transfer(f"{name}/r{r}-{side}", size, False))
            results[side].append(rate)
            log(f"{name} round {r + 1}/{rounds}: {side} {rate:.1f} MB/s")
    return results["proxy"], results["reference"]


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


async def s3_upload(ctx: BenchContext) -> list[Row]:
    """PUT through the proxy (S3 backend) vs a direct multipart upload, same part
    size and parts in flight, from this process to the same server."""
    s = ctx.settings
    async with ctx.s3_proxy("s3-upload") as server:
        cpu = CpuMeter(server)
        via_proxy = timed_proxy_put(ctx, server, cpu, ctx.delete_s3)

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

        proxy_rates, reference_rates = await alternate(ctx, "s3-upload", via_proxy, direct)
    name = f"S3 upload {_size(s.size)}"
    return [
        throughput_row(
            name,
            proxy_rates,
            reference_rates,
            min_ratio=THROUGHPUT_MIN_RATIO,
            reference_name=(
                f"direct aioboto3 multipart upload, {s.part_size // MiB} MiB parts, {s.concurrency} in flight"
            ),
            notes=[cpu.note(name)],
        )
    ]


async def local_upload(ctx: BenchContext) -> list[Row]:
    """PUT through the proxy (local backend) vs writing the file in a plain loop."""
    root, plain = ctx.workdir / "local-root", ctx.workdir / "plain"
    plain.mkdir(exist_ok=True)
    async with ctx.local_proxy("local-upload", root) as server:
        cpu = CpuMeter(server)
        via_proxy = timed_proxy_put(ctx, server, cpu, lambda key: proxy_delete(ctx.http, server.url, key))

        async def direct(key: str, size: int, warmup: bool) -> float:
            path = plain / key.replace("/", "_")
            seconds = await timed(asyncio.to_thread(plain_file_write, path, ctx.payload, size))
            path.unlink()
            return seconds

        proxy_rates, reference_rates = await alternate(ctx, "local-upload", via_proxy, direct)
    name = f"local upload {_size(ctx.settings.size)}"
    return [
        throughput_row(
            name,
            proxy_rates,
            reference_rates,
            # No target in the issue: the reference writes from memory with no HTTP,
            # while the proxy shares the cores with the benchmark's own client.
            min_ratio=None,
            reference_name="open + write 8 MiB blocks + fsync + close, same filesystem",
            notes=[cpu.note(name)],
        )
    ]


class RssSampler:
    """The largest VmRSS of a process, sampled every RSS_SAMPLE_SECONDS."""

    def __init__(self, proxy: ProxyProcess) -> None:
        self._proxy = proxy
        self.max = 0
        self.samples = 0

    async def _run(self) -> None:
        while True:
            self.max = max(self.max, self._proxy.rss())
            self.samples += 1
            await asyncio.sleep(RSS_SAMPLE_SECONDS)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[RssSampler]:
        task = asyncio.create_task(self._run())
        try:
            yield self
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            self.max = max(self.max, self._proxy.rss())


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
    results: dict[str, list[float]] = {"proxy": [], "reference": []}
    for r in range(ctx.settings.rounds):
        order = [("proxy", proxy), ("reference", reference)]
        if r % 2:
            order.reverse()
        for side, fetch in order:
            if side == "proxy":
                async with cpu.measuring(size):
                    seconds = await timed_fetch(fetch, None, size)
            else:
                seconds = await timed_fetch(fetch, None, size)
            rate = mbps(size, seconds)
            results[side].append(rate)
            log(f"{name} round {r + 1}/{ctx.settings.rounds}: {side} {rate:.1f} MB/s")
    return results["proxy"], results["reference"]


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
    results: dict[str, list[LatencySummary]] = {"proxy": [], "reference": []}
    cpu_ms: list[float] = []
    for r in range(rounds):
        offsets = range_offsets(size, count, seed=r)
        order = [("proxy", proxy), ("reference", reference)]
        if r % 2:
            order.reverse()
        for side, fetch in order:
            before = server.cpu_seconds()
            summary = LatencySummary.of(await range_latencies(fetch, offsets))
            if side == "proxy":
                cpu_ms.append((server.cpu_seconds() - before) / count * 1000)
            results[side].append(summary)
            log(
                f"{name} round {r + 1}/{rounds}: {side} median {summary.median * 1000:.2f} ms, "
                f"p99 {summary.p99 * 1000:.2f} ms"
            )
    note = (
        f"proxy process CPU (user+sys) {statistics.median(cpu_ms):.2f} ms per range request "
        "(median of rounds)"
    )
    return results["proxy"], results["reference"], note


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

    def per_round(summaries: list[LatencySummary]) -> str:
        return ", ".join(f"{s.median * 1000:.2f}/{s.p99 * 1000:.2f}" for s in summaries)

    return Row(
        measurement,
        f"median {_ms(p_median)}, p99 {_ms(p_p99)}",
        f"median {_ms(r_median)}, p99 {_ms(r_p99)}",
        f"median {diff * 1000:+.2f} ms (<= +{RANGE_MEDIAN_SLACK * 1000:.0f} ms); "
        f"p99 {(p_p99 - r_p99) * 1000:+.2f} ms",
        diff <= RANGE_MEDIAN_SLACK,
        notes=(
            f"{measurement}: reference = {reference_name}; per round median/p99 ms, "
            f"proxy [{per_round(proxy)}], reference [{per_round(reference)}]",
            *notes,
        ),
    )


def _connections(measurement: str, sockets: dict[str, set[tuple[str, int]]]) -> str:
    counts = ", ".join(f"{side} {len(socks)}" for side, socks in sockets.items())
    return f"{measurement}: client connections used (one expected each): {counts}"


@contextlib.asynccontextmanager
async def s3_download_object(ctx: BenchContext, name: str) -> AsyncIterator[tuple[ProxyProcess, int]]:
    """An S3-backend proxy and a ``download_size`` object PUT through it; deleted after."""
    size = ctx.settings.download_size
    async with ctx.s3_proxy(name) as server:
        await ctx.payload.sha256(size)
        seconds = await timed(proxy_put(ctx.http, server.url, DOWNLOAD_KEY, ctx.payload, size))
        log(f"{name}: stored {_size(size)} through the proxy ({mbps(size, seconds):.1f} MB/s)")
        try:
            yield server, size
        finally:
            await ctx.delete_s3(DOWNLOAD_KEY)


@contextlib.asynccontextmanager
async def local_download_object(ctx: BenchContext, name: str) -> AsyncIterator[tuple[ProxyProcess, str, int]]:
    """A local-backend proxy, a ``download_size`` file PUT through it and nginx serving
    the same root; yields (proxy, nginx URL of the file, size)."""
    size = ctx.settings.download_size
    root = ctx.workdir / "download-root"
    async with ctx.local_proxy(name, root) as server:
        await ctx.payload.sha256(size)
        seconds = await timed(proxy_put(ctx.http, server.url, DOWNLOAD_KEY, ctx.payload, size))
        log(f"{name}: stored {_size(size)} through the proxy ({mbps(size, seconds):.1f} MB/s)")
        path = root / DOWNLOAD_KEY
        if path.stat().st_size != size:
            raise BenchError(f"{path} has {path.stat().st_size} bytes, not {size}")
        try:
            async with run_nginx(root) as nginx:
                yield server, f"{nginx.url}/{quote(DOWNLOAD_KEY)}", size
        finally:
            await proxy_delete(ctx.http, server.url, DOWNLOAD_KEY)


async def s3_download(ctx: BenchContext) -> list[Row]:
    """GET /files/{key} through the proxy (S3 backend) vs a direct aioboto3 GetObject
    of the same object, both read to the end and discarded."""
    async with s3_download_object(ctx, "s3-download") as (server, size):
        cpu = CpuMeter(server)
        proxy = http_fetch(ctx.http, proxy_file_url(server.url, DOWNLOAD_KEY))
        reference = s3_fetch(ctx.s3_client, ctx.bucket, DOWNLOAD_KEY)
        proxy_rates, reference_rates = await alternate_downloads(
            ctx, "s3-download", size, proxy, reference, cpu
        )
    name = f"S3 download {_size(size)}"
    return [
        throughput_row(
            name,
            proxy_rates,
            reference_rates,
            min_ratio=THROUGHPUT_MIN_RATIO,
            reference_name=(
                f"direct aioboto3 GetObject, Body.iter_chunks({READ_CHUNK // 1024} KiB) discarded"
            ),
            notes=[cpu.note(name, "downloaded")],
        )
    ]


async def local_download(ctx: BenchContext) -> list[Row]:
    """GET /files/{key} through the proxy (local backend) vs nginx (sendfile) serving
    the same file, both read to the end by the same aiohttp client."""
    async with local_download_object(ctx, "local-download") as (server, nginx_url, size):
        cpu = CpuMeter(server)
        proxy = http_fetch(ctx.http, proxy_file_url(server.url, DOWNLOAD_KEY))
        reference = http_fetch(ctx.http, nginx_url)
        proxy_rates, reference_rates = await alternate_downloads(
            ctx, "local-download", size, proxy, reference, cpu
        )
    name = f"local download {_size(size)}"
    return [
        throughput_row(
            name,
            proxy_rates,
            reference_rates,
            min_ratio=THROUGHPUT_MIN_RATIO,
            reference_name="nginx (sendfile on, 1 worker) serving the same file from the same root",
            notes=[cpu.note(name, "downloaded")],
        )
    ]


def _range_name(ctx: BenchContext, backend: str, size: int) -> str:
    return f"{backend} {ctx.settings.range_count} x {RANGE_SIZE // MiB} MiB ranges of {_size(size)}"


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
        proxy = http_fetch(session, proxy_file_url(server.url, DOWNLOAD_KEY), sockets["proxy"])
        reference = s3_fetch(client, ctx.bucket, DOWNLOAD_KEY)
        proxy_lat, reference_lat, cpu = await alternate_ranges(
            ctx, "s3-range", size, proxy, reference, server
        )
    name = _range_name(ctx, "S3", size)
    return [
        latency_row(
            name,
            proxy_lat,
            reference_lat,
            reference_name="direct aioboto3 GetObject with Range, one pooled connection",
            notes=[f"{name}: {cpu}", _connections(name, sockets)],
        )
    ]


async def local_range_latency(ctx: BenchContext) -> list[Row]:
    """Random 1 MiB ranges, one after another on one keep-alive connection: through
    the proxy (local backend) vs nginx serving the same file."""
    sockets: dict[str, set[tuple[str, int]]] = {"proxy": set(), "nginx": set()}
    async with (
        local_download_object(ctx, "local-range") as (server, nginx_url, size),
        one_connection_session() as proxy_session,
        one_connection_session() as nginx_session,
    ):
        proxy = http_fetch(proxy_session, proxy_file_url(server.url, DOWNLOAD_KEY), sockets["proxy"])
        reference = http_fetch(nginx_session, nginx_url, sockets["nginx"])
        proxy_lat, reference_lat, cpu = await alternate_ranges(
            ctx, "local-range", size, proxy, reference, server
        )
    name = _range_name(ctx, "local", size)
    return [
        latency_row(
            name,
            proxy_lat,
            reference_lat,
            reference_name="nginx (sendfile on, 1 worker) serving the same file",
            notes=[f"{name}: {cpu}", _connections(name, sockets)],
        )
    ]


Measurement = Callable[[BenchContext], Awaitable[list[Row]]]

# Run in this order; BENCH_ONLY selects by name.
MEASUREMENTS: dict[str, Measurement] = {
    "s3_upload": s3_upload,
    "local_upload": local_upload,
    "proxy_rss": proxy_rss,
    "s3_download": s3_download,
    "local_download": local_download,
    "s3_range_latency": s3_range_latency,
    "local_range_latency": local_range_latency,
}
