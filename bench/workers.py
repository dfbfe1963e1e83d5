"""S3 upload throughput and proxy CPU with ``--workers 1`` vs ``--workers 2``.

Two proxies on the benchmark bucket, one with a single process and one with two
workers (proxy/serving/workers.py), each with the benchmark's part size, concurrency
and the default memory budget per process. A round sends ``BENCH_WORKERS_UPLOADS``
(8) concurrent PUTs of ``BENCH_WORKERS_MIB`` (256) MiB to each, one proxy after the
other, the one that goes first alternating. Throughput is all the bytes over the time
the last upload took; CPU is user + system time of the parent and its workers, read
from /proc/PID/stat before and after, per GiB uploaded. The row gives 2 workers
against 1 (ratio > 1: the second process helps); a note gives the CPU.

On a machine whose cores are shared with the S3 server (this one: two, with Ceph
RGW and its OSD), a second process can only help while the proxy's one event loop
is what limits: when S3 or the cores are, it only adds a process to schedule.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import statistics
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from bench.context import BenchContext, alternating
from bench.report import Row, mbps, throughput_row
from bench.servers import HOST, log, run_proxy, s3_storage_tables
from bench.settings import BenchError, MiB
from bench.upload import proxy_put

GiB = 1024 * MiB


def machine_cpu() -> tuple[int, int]:
    """(busy, total) clock ticks of all cores since boot, from /proc/stat."""
    with open("/proc/stat", encoding="ascii") as fh:
        ticks = [int(v) for v in fh.readline().split()[1:]]
    idle = ticks[3] + ticks[4]  # idle, iowait
    return sum(ticks) - idle, sum(ticks)


def _env_int(name: str, default: int) -> int:
    text = os.environ.get(name)
    if text is None:
        return default
    if not text.isdigit() or int(text) < 1:
        raise BenchError(f"{name}: expected a whole number of at least 1, got {text!r}")
    return int(text)


@dataclass
class WorkersProxy:
    workers: int
    pid: int
    port: int

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def pids(self) -> list[int]:
        """The process and its children (the workers, when there are some)."""
        found = [self.pid]
        for task in Path(f"/proc/{self.pid}/task").iterdir():
            found += [int(c) for c in (task / "children").read_text().split()]
        return found

    def cpu_seconds(self) -> float:
        """User + system CPU time of the process and its live children so far."""
        total = 0
        for pid in self.pids():
            with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
                fields = fh.read().rpartition(")")[2].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime: fields 14 and 15 of stat(5)
        return total / os.sysconf("SC_CLK_TCK")


@contextlib.asynccontextmanager
async def workers_proxy(ctx: BenchContext, workers: int) -> AsyncIterator[WorkersProxy]:
    """``stream-proxy serve --workers N`` on the benchmark bucket; stopped after."""
    name = f"workers-{workers}"
    storage = s3_storage_tables(ctx.s3_config())
    async with run_proxy(name, ctx.workdir, storage, ctx.s3, workers=workers) as process:
        proxy = WorkersProxy(workers, process.pid, process.port)
        # The port answers once one worker listens: wait for all of them.
        deadline = time.monotonic() + 30
        while len(proxy.pids()) < workers + (workers > 1):
            if time.monotonic() > deadline:
                raise BenchError(f"proxy {name}: {workers} workers did not start")
            await asyncio.sleep(0.1)
        await asyncio.sleep(1)  # the last worker's listener
        yield proxy


async def _uploads(ctx: BenchContext, proxy: WorkersProxy, prefix: str, count: int, size: int) -> float:
    """Seconds ``count`` concurrent PUTs of ``size`` take; the objects are then deleted."""
    keys = [f"{prefix}/{i}" for i in range(count)]
    start = time.perf_counter()
    await asyncio.gather(*(proxy_put(ctx.http, proxy.url, key, ctx.payload, size) for key in keys))
    seconds = time.perf_counter() - start
    await asyncio.gather(*(ctx.delete_s3(key) for key in keys))
    return seconds


async def s3_workers(ctx: BenchContext) -> list[Row]:
    count = _env_int("BENCH_WORKERS_UPLOADS", 8)
    size = _env_int("BENCH_WORKERS_MIB", 256) * MiB
    total = count * size
    await ctx.payload.sha256(size)  # computed once, outside any timing
    cpu: dict[int, list[float]] = {1: [], 2: []}
    busy: dict[int, list[float]] = {1: [], 2: []}  # of the whole machine, S3 server and all
    async with workers_proxy(ctx, 1) as one, workers_proxy(ctx, 2) as two:
        for proxy in (one, two):  # connections, imports and caches warmed up
            await _uploads(ctx, proxy, f"workers/warmup-{proxy.workers}", count, 16 * MiB)

        async def measure(r: int, side: str, proxy: WorkersProxy) -> float:
            before, machine_before = proxy.cpu_seconds(), machine_cpu()
            seconds = await _uploads(ctx, proxy, f"workers/r{r}-{side}", count, size)
            cpu[proxy.workers].append((proxy.cpu_seconds() - before) / (total / GiB))
            machine_after = machine_cpu()
            busy[proxy.workers].append(
                (machine_after[0] - machine_before[0]) / (machine_after[1] - machine_before[1])
            )
            rate = mbps(total, seconds)
            log(
                f"s3_workers round {r + 1}/{ctx.settings.rounds}: {proxy.workers} worker(s) "
                f"{rate:.1f} MB/s, CPU {cpu[proxy.workers][-1]:.2f} s/GiB, "
                f"machine {busy[proxy.workers][-1]:.0%} busy"
            )
            return rate

        rates_two, rates_one = await alternating(ctx.settings.rounds, two, one, measure)
    measurement = f"S3 upload {count} x {size // MiB} MiB, 2 workers"
    cpu_note = (
        f"{measurement}: proxy CPU (user+sys, parent and workers) per GiB uploaded, median: "
        f"2 workers {statistics.median(cpu[2]):.2f} s, 1 worker {statistics.median(cpu[1]):.2f} s; "
        f"per round 2 workers {[round(v, 2) for v in cpu[2]]}, 1 worker {[round(v, 2) for v in cpu[1]]}; "
        f"{os.cpu_count()} cores, shared with the S3 server"
    )
    busy_note = (
        f"{measurement}: the whole machine's cores busy (S3 server and other work included), "
        f"median: 2 workers {statistics.median(busy[2]):.0%}, 1 worker {statistics.median(busy[1]):.0%}"
    )
    return [
        throughput_row(
            measurement,
            rates_two,
            rates_one,
            min_ratio=None,
            reference_name="the same uploads through 1 worker",
            notes=[cpu_note, busy_note],
        )
    ]
