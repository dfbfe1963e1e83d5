"""Memory of the proxy process: RSS sampling, and the peak RSS of many concurrent S3
uploads beside the memory budget (storage.s3.memory_budget) that should bound it.

VmHWM (the kernel's high-water mark of the resident set) is the true peak; the
samples of VmRSS show whether it was a spike and what the process keeps afterwards.
VmHWM cannot be reset, so every measurement starts a fresh proxy process.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import aiohttp

from bench.context import BenchContext
from bench.payload import Payload
from bench.report import Row, mbps, mib
from bench.servers import ProxyProcess, log, run_proxy, s3_storage_tables
from bench.settings import BenchError, MiB
from proxy.config import ByteSize

RSS_SAMPLE_SECONDS = 0.05
# The target: what the process holds may exceed the budget by at most this
# (interpreter, libraries, connections and everything else the budget does not count).
BUDGET_SLACK = 100 * MiB
# Requests in flight while checking (and deleting) what the uploads stored, and the
# chunks their bytes are read back in.
CHECK_CONCURRENCY = 16
READ_BACK_CHUNK = 1024 * 1024


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


@dataclass(frozen=True)
class LoadResult:
    idle: int  # VmRSS of the fresh process before the first upload
    peak: int  # max of VmHWM and the sampled VmRSS
    sampled_max: int
    samples: int
    after: int  # VmRSS once every upload has been answered
    seconds: float


async def _put(
    session: aiohttp.ClientSession, url: str, payload: Payload, size: int, *, chunked: bool
) -> dict[str, Any]:
    """One streamed PUT; with ``chunked`` no Content-Length (aiohttp sends the
    generator chunked), so the proxy cannot know the size in advance."""
    headers = {"Content-Type": "application/octet-stream"}
    if not chunked:
        headers["Content-Length"] = str(size)
    async with session.put(url, data=payload.stream(size), headers=headers) as response:
        text = await response.text()
        if response.status != 201:
            raise BenchError(f"HTTP {response.status}: {text[:300]}")
        info: dict[str, Any] = await response.json()
    return info


async def concurrent_puts(
    proxy: ProxyProcess, payload: Payload, keys: list[str], size: int, *, chunked: bool
) -> tuple[float, list[str]]:
    """PUTs ``keys`` at once, each on its own connection; returns the seconds until
    the last answer and what went wrong (an answer other than 201 with ``size``
    bytes and the payload's SHA-256)."""
    expected = await payload.sha256(size)
    problems: list[str] = []
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=600)
    connector = aiohttp.TCPConnector(limit=len(keys))
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:

        async def one(key: str) -> None:
            url = f"{proxy.url}/files/{quote(key)}"
            try:
                info = await _put(session, url, payload, size, chunked=chunked)
            except (BenchError, aiohttp.ClientError, TimeoutError) as exc:
                problems.append(f"PUT {key}: {exc}")
                return
            if info.get("size") != size or info.get("sha256") != expected:
                problems.append(f"PUT {key}: answered size {info.get('size')}, sha256 {info.get('sha256')}")

        start = time.perf_counter()
        await asyncio.gather(*(one(key) for key in keys))
        return time.perf_counter() - start, problems


async def check_stored(ctx: BenchContext, keys: list[str], size: int, sha256: str) -> list[str]:
    """What S3 holds under ``keys``: each object read back whole, its bytes ``size``
    long with the payload's SHA-256 (what the proxy sent S3, not only what it hashed
    on receipt), and its stored sha256 (when it has one) the payload's too; returns
    the problems found."""
    slots = asyncio.Semaphore(CHECK_CONCURRENCY)
    problems: list[str] = []

    async def one(key: str) -> None:
        async with slots:
            try:
                response = await ctx.s3_client.get_object(Bucket=ctx.bucket, Key=key)
                digest, length = hashlib.sha256(), 0
                try:
                    async for chunk in response["Body"].iter_chunks(READ_BACK_CHUNK):
                        digest.update(chunk)
                        length += len(chunk)
                finally:
                    response["Body"].close()
            except Exception as exc:  # any failure to read it back is a failed upload
                problems.append(f"GET {key}: {exc!r}")
                return
        got, stored = digest.hexdigest(), response.get("Metadata", {}).get("sha256")
        if length != size or got != sha256 or stored not in (None, sha256):
            problems.append(f"{key}: read back {length} bytes, sha256 {got}; stored sha256 {stored}")

    await asyncio.gather(*(one(key) for key in keys))
    return problems


async def _delete(ctx: BenchContext, keys: list[str]) -> None:
    slots = asyncio.Semaphore(CHECK_CONCURRENCY)

    async def one(key: str) -> None:
        async with slots:
            await ctx.delete_s3(key)

    await asyncio.gather(*(one(key) for key in keys))


@contextlib.asynccontextmanager
async def budget_proxy(ctx: BenchContext, name: str, budget: int) -> AsyncIterator[ProxyProcess]:
    """A fresh S3-backend proxy with the benchmark's S3 settings and this memory budget."""
    s = ctx.settings
    cfg = ctx.s3.s3_config(
        ctx.bucket,
        part_size=ByteSize(s.part_size),
        max_concurrency=s.concurrency,
        memory_budget=ByteSize(budget),
    )
    async with run_proxy(name, ctx.workdir, s3_storage_tables(cfg), ctx.s3) as server:
        yield server


async def upload_load(ctx: BenchContext, budget: int, *, chunked: bool) -> LoadResult:
    """``concurrent_uploads`` PUTs of ``concurrent_size`` bytes at once through a fresh
    proxy with ``budget``; every answer and every stored object checked, then deleted.
    Raises BenchError if any upload failed: a failed run must not pass for a result."""
    s = ctx.settings
    size, count = s.concurrent_size, s.concurrent_uploads
    kind = "chunked" if chunked else "length"
    name = f"concurrent-{budget // MiB}mib-{kind}"
    keys = [f"{name}/{i:03d}" for i in range(count)]
    sha256 = await ctx.payload.sha256(size)  # once, before any timing
    async with budget_proxy(ctx, name, budget) as server:
        idle = server.rss()
        sampler = RssSampler(server)
        try:
            async with sampler.running():
                seconds, problems = await concurrent_puts(server, ctx.payload, keys, size, chunked=chunked)
            # VmHWM is updated lazily; a sample can be a little above it.
            peak = max(server.peak_rss(), sampler.max)
            after = server.rss()
            problems += await check_stored(ctx, keys, size, sha256)
        finally:
            await _delete_quietly(ctx, keys)
    if problems:
        raise BenchError(f"{len(problems)} of {count} uploads failed; first: {'; '.join(problems[:3])}")
    return LoadResult(idle, peak, sampler.max, sampler.samples, after, seconds)


async def _delete_quietly(ctx: BenchContext, keys: list[str]) -> None:
    """Remove what the uploads stored; what a failed one left is the bucket's
    emptying's to remove (every measurement is followed by it)."""
    try:
        await _delete(ctx, keys)
    except Exception as exc:
        log(f"could not delete every uploaded object: {exc!r}")


async def s3_concurrent_rss(ctx: BenchContext) -> list[Row]:
    """Peak RSS of a proxy process under ``concurrent_uploads`` simultaneous S3
    uploads, for each budget in ``concurrent_budgets`` (bodies with a Content-Length)
    and, with ``concurrent_chunked``, once more at the first budget with chunked
    bodies of unknown length. Target: peak <= budget + BUDGET_SLACK."""
    s = ctx.settings
    runs = [(budget, False) for budget in s.concurrent_budgets]
    if s.concurrent_chunked and s.concurrent_budgets:
        runs.append((s.concurrent_budgets[0], True))
    rows: list[Row] = []
    for budget, chunked in runs:
        result = await upload_load(ctx, budget, chunked=chunked)
        rows.append(_row(ctx, budget, chunked, result))
    return rows


def _row(ctx: BenchContext, budget: int, chunked: bool, r: LoadResult) -> Row:
    s = ctx.settings
    body = "chunked, no length" if chunked else "Content-Length"
    measurement = (
        f"proxy peak RSS, {s.concurrent_uploads} concurrent {s.concurrent_size // MiB} MiB S3 uploads "
        f"({body}), budget {budget // MiB} MiB"
    )
    limit = budget + BUDGET_SLACK
    total = s.concurrent_uploads * s.concurrent_size
    log(
        f"{measurement}: idle {mib(r.idle)}, peak {mib(r.peak)}, after {mib(r.after)}, "
        f"{mbps(total, r.seconds):.1f} MB/s"
    )
    return Row(
        measurement,
        mib(r.peak),
        f"idle {mib(r.idle)}",
        f"<= {limit // MiB} MiB (budget + {BUDGET_SLACK // MiB} MiB); {r.peak / budget:.2f}x budget",
        r.peak <= limit,
        notes=(
            f"{measurement}: peak = max of VmHWM and VmRSS sampled every {RSS_SAMPLE_SECONDS * 1000:.0f} ms "
            f"(max {mib(r.sampled_max)}, {r.samples} samples); {mib(r.peak - r.idle)} above idle, "
            f"{mib(r.peak - budget - r.idle)} above idle + budget; RSS after the last answer "
            f"{mib(r.after)}; all {s.concurrent_uploads} answers checked (201, size, sha256) and every "
            f"stored object read back (size, sha256 of its bytes and of its metadata); "
            f"{mbps(total, r.seconds):.1f} MB/s in all, {r.seconds:.1f} s",
        ),
    )
