"""What every measurement shares: the BenchContext it is given, the alternating
rounds of proxy against reference (:func:`alternating`, :func:`throughput_rounds`,
:func:`alternate`), the proxy's CPU per GiB (:class:`CpuMeter`) and the throughput
target.

The measurements themselves (the rows of the table) are in :mod:`bench.measurements`
(uploads, peak RSS, and the registry of all), :mod:`bench.download_rows` (downloads
and range latency), :mod:`bench.memory`, :mod:`bench.auth` and :mod:`bench.workers`.
"""

from __future__ import annotations

import contextlib
import statistics
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import aiohttp

from bench.payload import Payload
from bench.report import mbps
from bench.servers import (
    ProxyProcess,
    S3Endpoint,
    local_storage_tables,
    log,
    run_proxy,
    s3_storage_tables,
)
from bench.settings import MiB, Settings
from proxy.config import ByteSize, S3Config

THROUGHPUT_MIN_RATIO = 0.9


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


def size_label(n: int) -> str:
    return f"{n // MiB} MiB" if n % (1024 * MiB) else f"{n // (1024 * MiB)} GiB"
