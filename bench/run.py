"""Entry point: set up the servers, run the measurements, print the table."""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

from bench.auth import auth_cost
from bench.context import BenchContext
from bench.measurements import MEASUREMENTS, Measurement
from bench.payload import Payload
from bench.report import Row, error_row, render
from bench.servers import empty_bucket, fresh_bucket, log, real_s3, temp_workdir
from bench.settings import BenchError, MiB, Settings
from bench.small_requests import concurrent_ranges, request_floor, small_ranges
from bench.tus import local_tus_concat, s3_tus_concat
from bench.upload import http_session
from bench.video import video_hls
from bench.workers import s3_workers

# Every measurement, in the order run: those of measurements.py, then the modules' own.
ALL: dict[str, Measurement] = {**MEASUREMENTS, "auth_cost": auth_cost}
ALL["s3_workers"] = s3_workers
ALL["video_hls"] = video_hls
ALL["small_ranges"] = small_ranges
ALL["concurrent_ranges"] = concurrent_ranges
ALL["request_floor"] = request_floor
ALL["local_tus_concat"] = local_tus_concat
ALL["s3_tus_concat"] = s3_tus_concat


def selected(settings: Settings) -> dict[str, Measurement]:
    unknown = settings.only - set(ALL)
    if unknown:
        raise BenchError(f"BENCH_ONLY: unknown measurement(s) {sorted(unknown)}; known: {list(ALL)}")
    return {n: m for n, m in ALL.items() if not settings.only or n in settings.only}


async def run(settings: Settings, measurements: dict[str, Measurement]) -> tuple[list[Row], str]:
    with temp_workdir() as workdir:
        return await _run_in(workdir, settings, measurements)


async def _run_in(
    workdir: Path, settings: Settings, measurements: dict[str, Measurement]
) -> tuple[list[Row], str]:
    payload = Payload()
    rows: list[Row] = []
    async with (
        real_s3(settings) as s3,
        s3.client(s3.s3_config()) as client,
        fresh_bucket(client) as bucket,
        http_session() as http,
    ):
        ctx = BenchContext(settings, s3, client, bucket, workdir, payload, http)
        for name, measure in measurements.items():
            log(f"measuring {name}")
            try:
                rows.extend(await measure(ctx))
            except Exception as exc:
                log(f"{name} failed: {exc!r}")
                rows.append(error_row(name, exc))
            finally:
                await empty_bucket(client, bucket)
    title = (
        f"stream-proxy benchmark: {settings.size // MiB} MiB uploads, "
        f"{settings.download_size // MiB} MiB downloads, median of {settings.rounds} "
        f"round(s); S3 = {s3.url}, parts of {settings.part_size // MiB} MiB, "
        f"{settings.concurrency} in flight"
    )
    return rows, title


def main() -> int:
    started = time.monotonic()
    try:
        settings = Settings.from_env()
        measurements = selected(settings)
        rows, title = asyncio.run(run(settings, measurements))
    except BenchError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("bench: interrupted", file=sys.stderr)
        return 130
    print(render(rows, title))
    log(f"done in {time.monotonic() - started:.0f} s")
    # Missed targets are results; a measurement that could not run is a failure.
    return 1 if any(r.proxy == "error" for r in rows) else 0
