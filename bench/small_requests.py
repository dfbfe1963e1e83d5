"""What a small request costs (issue 17): ``small_ranges``, ``concurrent_ranges`` and
``request_floor``, the proxy beside nginx on both backends and beside a bare aiohttp
app.

The client is curl, as in the issue's measurement: a C client that costs the two shared
cores little, so that the servers' costs are what differ. One curl process reads a
list of ranges of one object: one after another on its one keep-alive connection
(``small_ranges``, ``request_floor``), or 32 at a time (``concurrent_ranges``,
``--parallel``: each of up to 32 keep-alive connections takes the next range when it
is free, as 32 clients of 20 ranges each would; a fast server may finish the first
ranges before curl has opened the 32nd connection). curl reports each transfer's status, bytes,
seconds and new connections; every answer is checked (206, the range's length).
CPU per request is the server process's CPU time (its threads' schedstat run time)
over a round divided by the requests it served; nginx runs as one process (no master), so
its pid is its worker's.

- ``small_ranges``: ``range_count`` random 1 KiB ranges per side and round; median,
  p99 and CPU per request. Local: nginx serving the same root. S3: nginx as a reverse
  proxy to the object made public-read (:mod:`bench.nginx_s3`). The issue's targets,
  judged on S3: median and p99 within 1.3x nginx's, CPU <= 0.5 ms per request.
- ``concurrent_ranges``: 32 clients x 20 random 1 MiB ranges at once per side and
  round; aggregate MB/s (all bytes over curl's wall time, its few ms of start
  included) and p99. Target on S3:
  MB/s >= nginx's and p99 <= nginx's.
- ``request_floor``: the proxy (local backend) beside a bare aiohttp app in its own
  process with the same Python, whose one handler answers every GET with a constant
  1 KiB 206: aiohttp's own per-request cost, the floor of this design. No target.

Local rows inform (the issue's local target is for 1 MiB ranges: local_range_latency).
Rounds alternate which side goes first (:func:`bench.context.alternating`); rows give
medians over the rounds and each round's figures in a note.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import shutil
import statistics
import sys
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import aiohttp

from bench.context import BenchContext, alternating
from bench.download import nearest_rank, proxy_file_url
from bench.nginx import run_nginx
from bench.nginx_s3 import make_public, run_nginx_s3
from bench.report import Row, compared_row, mbps
from bench.servers import HOST, free_port, log, server_process
from bench.settings import BenchError, MiB
from bench.upload import proxy_delete, proxy_put

KiB = 1024
SMALL_RANGE = 1 * KiB
LARGE_RANGE = 1 * MiB
CLIENTS, PER_CLIENT = 32, 20
# The targets (S3): latency within this times nginx's, CPU per small request.
LATENCY_MAX_RATIO = 1.3
CPU_MAX_MS = 0.5
# The object the proxy and nginx serve: large enough that the ranges spread over it.
OBJECT_SIZE = 256 * MiB
OBJECT_KEY = "small-requests/object.bin"
FLOOR_OBJECT = 1 * MiB
FLOOR_KEY = "floor/object.bin"
CURL_FORMAT = r"%{http_code} %{size_download} %{time_total} %{num_connects}\n"

# The bare aiohttp app of request_floor, run as ``python -c FLOOR_APP HOST PORT``: one
# handler, a constant body and headers, no access log, aiohttp's defaults otherwise.
FLOOR_APP = f"""
import sys
from aiohttp import web

BODY = b"x" * {SMALL_RANGE}
HEADERS = {{
    "Content-Range": "bytes 0-{SMALL_RANGE - 1}/{FLOOR_OBJECT}",
    "Content-Type": "application/octet-stream",
}}

async def constant(request):
    return web.Response(body=BODY, status=206, headers=HEADERS)

app = web.Application()
app.router.add_get("/{{tail:.*}}", constant)
web.run_app(app, host=sys.argv[1], port=int(sys.argv[2]), access_log=None, print=None)
"""


@dataclass(frozen=True)
class Transfer:
    status: int
    size: int
    seconds: float
    connects: int


@dataclass(frozen=True)
class Side:
    """One server under test: the URL of the object it serves and its process."""

    name: str
    url: str
    pid: int


@dataclass(frozen=True)
class Batch:
    """One side's round: latencies in seconds, CPU per request, wall time, connections."""

    seconds: list[float]
    cpu_per_request: float
    wall: float
    connections: int

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    @property
    def p99(self) -> float:
        return nearest_rank(sorted(self.seconds), 0.99)


def process_cpu_seconds(pid: int) -> float:
    """Seconds of CPU process ``pid``'s threads have used so far: the sum of their run
    times in /proc/PID/task/TID/schedstat (nanoseconds). /proc/PID/stat's user + system
    time counts 10 ms ticks, too coarse for nginx's ~0.1 ms per request over a few
    hundred requests. A thread that has exited is missing from the sum: the proxy's
    file threads stay in their pool, and nginx has none."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(FileNotFoundError):  # a thread that just exited
            total += int((task / "schedstat").read_text().split()[0])
    return total / 1e9


def random_offsets(object_size: int, length: int, count: int, seed: int) -> list[int]:
    """``count`` random starts of ``length``-byte ranges inside the object."""
    rng = random.Random(seed)
    return [rng.randrange(0, max(1, object_size - length + 1)) for _ in range(count)]


def curl_config(url: str, offsets: Sequence[int], length: int) -> str:
    """A curl config (``--config -``) of one GET of ``url`` per range, bodies
    discarded, each transfer writing one CURL_FORMAT line."""
    entry = f'url = "{url}"\noutput = "/dev/null"\nwrite-out = "{CURL_FORMAT}"\n'
    return "next\n".join(
        entry + f'header = "Range: bytes={offset}-{offset + length - 1}"\n' for offset in offsets
    )


def parse_curl_output(text: str) -> list[Transfer]:
    """The CURL_FORMAT lines curl wrote, one Transfer each."""
    transfers = []
    for line in text.splitlines():
        status, size, seconds, connects = line.split()
        transfers.append(Transfer(int(status), int(size), float(seconds), int(connects)))
    return transfers


def curl_binary() -> str:
    found = shutil.which("curl")
    if found is None:
        raise BenchError("curl is not installed (apt-get install curl): the small-request benchmarks' client")
    return found


async def run_curl(
    url: str, offsets: Sequence[int], length: int, parallel: int = 0
) -> tuple[list[Transfer], float]:
    """The ranges fetched by one curl process (``parallel`` at a time on as many
    connections, or one after another); checked; returns them and curl's wall time."""
    argv = [curl_binary(), "--silent", "--show-error", "--config", "-"]
    if parallel:
        argv[1:1] = ["--parallel", "--parallel-max", str(parallel)]
    start = time.perf_counter()
    proc = await asyncio.create_subprocess_exec(
        *argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await proc.communicate(curl_config(url, offsets, length).encode())
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise BenchError(f"curl {url}: exit {proc.returncode}: {err.decode(errors='replace')[:300]}")
    transfers = parse_curl_output(out.decode())
    bad = [t for t in transfers if t.status != 206 or t.size != length]
    if bad or len(transfers) != len(offsets):
        raise BenchError(f"curl {url}: {len(transfers)} of {len(offsets)} answers, unexpected: {bad[:3]}")
    return transfers, wall


async def batch(side: Side, offsets: Sequence[int], length: int, parallel: int = 0, warmup: int = 0) -> Batch:
    """``offsets`` ranges from ``side`` by :func:`run_curl`, the first ``warmup`` of
    them untimed (they open the connection); CPU per request counts every request."""
    before = process_cpu_seconds(side.pid)
    transfers, wall = await run_curl(side.url, offsets, length, parallel)
    cpu = (process_cpu_seconds(side.pid) - before) / len(offsets)
    return Batch([t.seconds for t in transfers[warmup:]], cpu, wall, sum(t.connects for t in transfers))


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f} ms"


def _median(batches: list[Batch], value: Callable[[Batch], float]) -> float:
    return statistics.median(value(b) for b in batches)


async def sequential_rounds(
    ctx: BenchContext, name: str, size: int, proxy: Side, reference: Side
) -> tuple[list[Batch], list[Batch]]:
    """``range_count`` random 1 KiB ranges of the ``size`` object per side and round, one
    after another on one connection, plus one untimed first range; alternating."""
    count, rounds = ctx.settings.range_count, ctx.settings.rounds

    async def measure(r: int, side_name: str, side: Side) -> Batch:
        offsets = [0, *random_offsets(size, SMALL_RANGE, count, seed=r)]
        result = await batch(side, offsets, SMALL_RANGE, warmup=1)
        log(
            f"{name} round {r + 1}/{rounds}: {side.name} median {_ms(result.median)}, "
            f"p99 {_ms(result.p99)}, CPU {_ms(result.cpu_per_request)}/request"
        )
        return result

    await batch(proxy, [0] * 20, SMALL_RANGE)  # imports, caches and S3 connections warmed
    await batch(reference, [0] * 20, SMALL_RANGE)
    return await alternating(rounds, proxy, reference, measure)


def latency_rows(
    measurement: str, proxy: list[Batch], reference: list[Batch], *, judged: bool, reference_name: str
) -> list[Row]:
    """The latency row (median and p99 against the reference's) and the CPU row of a
    sequential measurement; ``judged``: held against the issue's targets."""
    p_med, r_med = _median(proxy, lambda b: b.median), _median(reference, lambda b: b.median)
    p_p99, r_p99 = _median(proxy, lambda b: b.p99), _median(reference, lambda b: b.p99)
    p_cpu, r_cpu = (
        _median(proxy, lambda b: b.cpu_per_request),
        _median(reference, lambda b: b.cpu_per_request),
    )
    ratios = (p_med / r_med, p_p99 / r_p99)
    bound = f" (<= {LATENCY_MAX_RATIO:.1f}x)" if judged else ""
    connections = [b.connections for b in proxy + reference]
    latency = compared_row(
        measurement,
        f"median {_ms(p_med)}, p99 {_ms(p_p99)}",
        f"median {_ms(r_med)}, p99 {_ms(r_p99)}",
        f"median {ratios[0]:.2f}x, p99 {ratios[1]:.2f}x{bound}",
        max(ratios) <= LATENCY_MAX_RATIO if judged else None,
        reference_name=reference_name,
        unit="median/p99 ms",
        proxy_rounds=[f"{b.median * 1000:.2f}/{b.p99 * 1000:.2f}" for b in proxy],
        reference_rounds=[f"{b.median * 1000:.2f}/{b.p99 * 1000:.2f}" for b in reference],
        notes=[f"{measurement}: connections per side and round (one expected): {connections}"],
    )
    cpu_measurement = f"{measurement}: CPU per request"
    cpu = compared_row(
        cpu_measurement,
        _ms(p_cpu),
        _ms(r_cpu),
        f"{p_cpu / r_cpu:.1f}x" + (f"; <= {CPU_MAX_MS:.1f} ms" if judged else "") if r_cpu else "-",
        p_cpu * 1000 <= CPU_MAX_MS if judged else None,
        reference_name=f"{reference_name}, its process's CPU",
        unit="ms of CPU per request",
        proxy_rounds=[f"{b.cpu_per_request * 1000:.3f}" for b in proxy],
        reference_rounds=[f"{b.cpu_per_request * 1000:.3f}" for b in reference],
    )
    return [latency, cpu]


async def concurrent_rounds(
    ctx: BenchContext, name: str, size: int, proxy: Side, reference: Side
) -> tuple[list[Batch], list[Batch]]:
    """CLIENTS x PER_CLIENT random 1 MiB ranges of the ``size`` object per side and
    round, CLIENTS at a time on as many connections; alternating."""
    rounds, count = ctx.settings.rounds, CLIENTS * PER_CLIENT

    async def measure(r: int, side_name: str, side: Side) -> Batch:
        result = await batch(side, random_offsets(size, LARGE_RANGE, count, seed=r), LARGE_RANGE, CLIENTS)
        log(
            f"{name} round {r + 1}/{rounds}: {side.name} {mbps(count * LARGE_RANGE, result.wall):.1f} MB/s, "
            f"p99 {_ms(result.p99)}, CPU {_ms(result.cpu_per_request)}/request, "
            f"{result.connections} connections"
        )
        return result

    warm = random_offsets(size, LARGE_RANGE, CLIENTS, seed=-1)
    await batch(proxy, warm, LARGE_RANGE, CLIENTS)
    await batch(reference, warm, LARGE_RANGE, CLIENTS)
    return await alternating(rounds, proxy, reference, measure)


def concurrent_row(
    measurement: str, proxy: list[Batch], reference: list[Batch], *, judged: bool, reference_name: str
) -> Row:
    """Aggregate MB/s and p99 against the reference's; ``judged``: MB/s >= and p99 <=
    the reference's (the issue's S3 target). A note gives CPU per request."""
    total = CLIENTS * PER_CLIENT * LARGE_RANGE
    p_rates, r_rates = [mbps(total, b.wall) for b in proxy], [mbps(total, b.wall) for b in reference]
    p_rate, r_rate = statistics.median(p_rates), statistics.median(r_rates)
    rate_ratio = statistics.median(p / r for p, r in zip(p_rates, r_rates, strict=True))
    p_p99, r_p99 = _median(proxy, lambda b: b.p99), _median(reference, lambda b: b.p99)
    bounds = (" (>= 1.00)", " (<= 1.00)") if judged else ("", "")
    p_cpu, r_cpu = (
        _median(proxy, lambda b: b.cpu_per_request),
        _median(reference, lambda b: b.cpu_per_request),
    )
    cpu_note = (
        f"{measurement}: CPU per request (median of rounds) proxy {_ms(p_cpu)}, "
        f"reference {_ms(r_cpu)}; connections per side and round "
        f"({CLIENTS} at most): {[b.connections for b in proxy + reference]}; MB/s ratio = median of "
        "the rounds' own ratios"
    )
    return compared_row(
        measurement,
        f"{p_rate:.1f} MB/s, p99 {_ms(p_p99)}",
        f"{r_rate:.1f} MB/s, p99 {_ms(r_p99)}",
        f"MB/s {rate_ratio:.2f}x{bounds[0]}, p99 {p_p99 / r_p99:.2f}x{bounds[1]}",
        (rate_ratio >= 1 and p_p99 <= r_p99) if judged else None,
        reference_name=reference_name,
        unit="MB/s / p99 ms",
        proxy_rounds=[f"{rate:.1f}/{b.p99 * 1000:.1f}" for rate, b in zip(p_rates, proxy, strict=True)],
        reference_rounds=[
            f"{rate:.1f}/{b.p99 * 1000:.1f}" for rate, b in zip(r_rates, reference, strict=True)
        ],
        notes=[cpu_note],
    )


NGINX_LOCAL = "nginx 1.22 (sendfile on, 1 process) serving the same file"
NGINX_S3 = (
    "nginx 1.22 (1 process) as a reverse proxy to the same object, public-read, on the same S3 "
    "server: keep-alive upstream, HTTP/1.1, 256 KiB proxy buffers"
)


@contextlib.asynccontextmanager
async def served_object(ctx: BenchContext, backend: str, name: str) -> AsyncIterator[tuple[Side, Side, int]]:
    """A proxy on ``backend`` ("local" or "S3"), an object of OBJECT_SIZE (at most
    ``download_size``) PUT through it and nginx serving the same object; yields
    (proxy, nginx, size). The object is deleted after."""
    size = min(OBJECT_SIZE, ctx.settings.download_size)
    await ctx.payload.sha256(size)
    root = ctx.workdir / f"{name}-root"
    async with contextlib.AsyncExitStack() as stack:
        local = backend == "local"
        server = await stack.enter_async_context(ctx.local_proxy(name, root) if local else ctx.s3_proxy(name))
        await proxy_put(ctx.http, server.url, OBJECT_KEY, ctx.payload, size)
        stack.push_async_callback(proxy_delete, ctx.http, server.url, OBJECT_KEY)
        if local:
            nginx = await stack.enter_async_context(run_nginx(root))
        else:
            await make_public(ctx.s3_client, ctx.bucket, OBJECT_KEY)
            nginx = await stack.enter_async_context(run_nginx_s3(ctx.s3.url, ctx.bucket))
        proxy = Side("proxy", proxy_file_url(server.url, OBJECT_KEY), server.pid)
        yield proxy, Side("nginx", f"{nginx.url}/{quote(OBJECT_KEY)}", nginx.proc.pid), size


async def small_ranges(ctx: BenchContext) -> list[Row]:
    """Random 1 KiB ranges one after another on one connection: proxy vs nginx, local
    then S3."""
    rows: list[Row] = []
    for backend, reference_name in (("local", NGINX_LOCAL), ("S3", NGINX_S3)):
        name = f"{backend.lower()}-small-ranges"
        async with served_object(ctx, backend, name) as (proxy, nginx, size):
            results = await sequential_rounds(ctx, name, size, proxy, nginx)
        measurement = f"{backend} {ctx.settings.range_count} x 1 KiB ranges, 1 connection"
        rows += latency_rows(measurement, *results, judged=backend == "S3", reference_name=reference_name)
    return rows


async def concurrent_ranges(ctx: BenchContext) -> list[Row]:
    """CLIENTS clients x PER_CLIENT random 1 MiB ranges at once: proxy vs nginx, local
    then S3."""
    rows: list[Row] = []
    for backend, reference_name in (("local", NGINX_LOCAL), ("S3", NGINX_S3)):
        name = f"{backend.lower()}-concurrent-ranges"
        async with served_object(ctx, backend, name) as (proxy, nginx, size):
            results = await concurrent_rounds(ctx, name, size, proxy, nginx)
        measurement = f"{backend} {CLIENTS} clients x {PER_CLIENT} x 1 MiB ranges"
        rows.append(
            concurrent_row(measurement, *results, judged=backend == "S3", reference_name=reference_name)
        )
    return rows


@contextlib.asynccontextmanager
async def floor_app(log_path: Path) -> AsyncIterator[tuple[asyncio.subprocess.Process, str]]:
    """FLOOR_APP on a free port with this Python, its output in ``log_path``; yields
    it and its URL."""
    port = free_port()
    async with server_process(
        [sys.executable, "-c", FLOOR_APP, HOST, str(port)],
        label="bare aiohttp app",
        port=port,
        time_limit=30,
        log_path=log_path,
        log_lines=20,
        capture_output=True,
        term_timeout=5,
    ) as proc:
        yield proc, f"http://{HOST}:{port}/{quote(FLOOR_KEY)}"


async def request_floor(ctx: BenchContext) -> list[Row]:
    """Random 1 KiB ranges one after another on one connection: the proxy (local
    backend) vs a bare aiohttp app answering a constant 1 KiB."""
    root = ctx.workdir / "floor-root"
    await ctx.payload.sha256(FLOOR_OBJECT)
    async with (
        ctx.local_proxy("request-floor", root) as server,
        floor_app(ctx.workdir / "floor-app.log") as (app, app_url),
    ):
        await proxy_put(ctx.http, server.url, FLOOR_KEY, ctx.payload, FLOOR_OBJECT)
        proxy = Side("proxy", proxy_file_url(server.url, FLOOR_KEY), server.pid)
        results = await sequential_rounds(
            ctx, "request-floor", FLOOR_OBJECT, proxy, Side("aiohttp", app_url, app.pid)
        )
        await proxy_delete(ctx.http, server.url, FLOOR_KEY)
    measurement = f"request floor: local {ctx.settings.range_count} x 1 KiB ranges, 1 connection"
    reference_name = (
        f"a bare aiohttp {aiohttp.__version__} app (this Python, own process, no access log) whose one "
        "handler answers a constant 1 KiB 206"
    )
    return latency_rows(measurement, *results, judged=False, reference_name=reference_name)
