"""Benchmark settings, read from the environment."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

MiB = 1024 * 1024
MB = 1_000_000


class BenchError(Exception):
    """The benchmark cannot run or a measurement failed; str() says why."""


@dataclass(frozen=True)
class Settings:
    size: int = 512 * MiB
    rounds: int = 5
    rss_sizes: tuple[int, ...] = (200 * MiB, 1024 * MiB)
    warmup: int = 32 * MiB
    # The object the download measurements read, and how many ranges of it time latency.
    download_size: int = 1024 * MiB
    range_count: int = 200
    # The resumable (tus) upload: its size and the size of each PATCH.
    tus_size: int = 500 * MiB
    tus_chunk: int = 8 * MiB
    # Concurrent S3 uploads whose peak RSS is held against the memory budget: how
    # many, each how large (several parts each, so that parts are read while others
    # are in flight), the budgets to run with, and whether to add a run of chunked
    # bodies (no Content-Length) at the first budget.
    concurrent_uploads: int = 100
    concurrent_size: int = 24 * MiB
    concurrent_budgets: tuple[int, ...] = (256 * MiB, 64 * MiB)
    concurrent_chunked: bool = True
    # The proxy's S3 upload settings, which the direct reference upload copies.
    part_size: int = 6 * MiB
    concurrency: int = 4
    s3_endpoint: str | None = None
    access_key: str = "testaccesskey"
    secret_key: str = "testsecretkey"
    region: str = "us-east-1"
    only: frozenset[str] = frozenset()

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        only = env.get("BENCH_ONLY", "")
        return cls(
            size=_mib(env, "BENCH_SIZE_MIB", 512, minimum=1),
            rounds=_int(env, "BENCH_ROUNDS", 5, minimum=1),
            rss_sizes=tuple(
                _parse_int("BENCH_RSS_SIZES_MIB", part, minimum=1) * MiB
                for part in env.get("BENCH_RSS_SIZES_MIB", "200,1024").split(",")
                if part.strip()
            ),
            warmup=_mib(env, "BENCH_WARMUP_MIB", 32, minimum=0),
            download_size=_mib(env, "BENCH_DOWNLOAD_MIB", 1024, minimum=1),
            range_count=_int(env, "BENCH_RANGE_COUNT", 200, minimum=1),
            tus_size=_mib(env, "BENCH_TUS_MIB", 500, minimum=1),
            tus_chunk=_mib(env, "BENCH_TUS_CHUNK_MIB", 8, minimum=1),
            concurrent_uploads=_int(env, "BENCH_CONCURRENT_UPLOADS", 100, minimum=1),
            concurrent_size=_mib(env, "BENCH_CONCURRENT_MIB", 24, minimum=1),
            concurrent_budgets=tuple(
                _parse_int("BENCH_CONCURRENT_BUDGETS_MIB", part, minimum=6) * MiB
                for part in env.get("BENCH_CONCURRENT_BUDGETS_MIB", "256,64").split(",")
                if part.strip()
            ),
            concurrent_chunked=_int(env, "BENCH_CONCURRENT_CHUNKED", 1, minimum=0) > 0,
            s3_endpoint=env.get("STREAM_PROXY_BENCH_S3") or None,
            access_key=env.get("S3_ACCESS_KEY", "testaccesskey"),
            secret_key=env.get("S3_SECRET_KEY", "testsecretkey"),
            region=env.get("S3_REGION", "us-east-1"),
            only=frozenset(name.strip() for name in only.split(",") if name.strip()),
        )


def _parse_int(name: str, text: str, *, minimum: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise BenchError(f"{name}: expected an integer, got {text!r}") from None
    if value < minimum:
        raise BenchError(f"{name}: must be at least {minimum}, got {value}")
    return value


def _int(env: Mapping[str, str], name: str, default: int, *, minimum: int) -> int:
    return _parse_int(name, env[name], minimum=minimum) if name in env else default


def _mib(env: Mapping[str, str], name: str, default: int, *, minimum: int) -> int:
    return _int(env, name, default, minimum=minimum) * MiB
