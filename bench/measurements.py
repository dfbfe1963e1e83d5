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

import aiohttp

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
from bench.settings import MiB, Settings
from bench.upload import (
    direct_multipart_upload,
    plain_file_write,
    proxy_delete,
    proxy_put,
    timed,
)
from proxy.config import ByteSize, S3Config

THROUGHPUT_MIN_RATIO = 0.9
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

    def note(self, measurement: str) -> str:
        if not self.per_gib:
            return f"{measurement}: no proxy CPU measured"
        return (
            f"{measurement}: proxy process CPU (user+sys) {statistics.median(self.per_gib):.2f} s per GiB "
            "uploaded (median)"
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


Measurement = Callable[[BenchContext], Awaitable[list[Row]]]

# Run in this order; BENCH_ONLY selects by name.
MEASUREMENTS: dict[str, Measurement] = {
    "s3_upload": s3_upload,
    "local_upload": local_upload,
    "proxy_rss": proxy_rss,
}
