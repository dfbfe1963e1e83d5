"""The processes a benchmark talks to: the real S3 server, a bucket on it, and the
proxy, each an async context manager that cleans up after itself."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import shutil
import signal
import socket
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import aioboto3

from bench.settings import BenchError, Settings
from proxy.config import S3Config
from proxy.storage.s3.objects import boto_config

REPO = Path(__file__).resolve().parents[1]
SHARED_S3 = REPO.parent / "shared" / "s3"
HOST = "127.0.0.1"
# Ports we pick for the S3 server's daemons lie below the kernel's ephemeral range,
# so that no outgoing connection takes them while the cluster starts.
DAEMON_PORTS = (20000, 32000)
OSD_PORT_COUNT = 32


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def free_port_range(count: int, exclude: frozenset[int] = frozenset()) -> int:
    """The first of ``count`` consecutive free ports in DAEMON_PORTS."""
    low, high = DAEMON_PORTS
    starts = list(range(low, high - count, count))
    random.shuffle(starts)
    for start in starts:
        ports = range(start, start + count)
        if not exclude.intersection(ports) and all(_bindable(p) for p in ports):
            return start
    raise BenchError(f"no {count} consecutive free ports in {low}-{high}")


def _file_tail(path: Path, lines: int) -> str:
    """The last ``lines`` lines of a log file; empty if it cannot be read."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


@contextlib.asynccontextmanager
async def server_process(
    argv: list[str],
    *,
    label: str,
    port: int,
    time_limit: float,
    log_path: Path,
    log_lines: int,
    capture_output: bool,
    term_timeout: float | None = None,
    **spawn: Any,
) -> AsyncIterator[asyncio.subprocess.Process]:
    """``argv`` started, yielded once it accepts connections on ``port`` (within
    ``time_limit`` s) and stopped afterwards: SIGTERM and SIGKILL after ``term_timeout``
    s, or SIGKILL at once if None. Its stdout and stderr are written to ``log_path`` if
    ``capture_output``, else discarded; errors quote ``log_lines`` of that log and name
    the process ``label``. ``spawn``: more arguments of create_subprocess_exec."""
    devnull = asyncio.subprocess.DEVNULL
    with _open_log(log_path) if capture_output else contextlib.nullcontext(devnull) as out:
        proc = await asyncio.create_subprocess_exec(*argv, stdin=devnull, stdout=out, stderr=out, **spawn)
    try:
        await _wait_for_port(proc, port, label, time_limit, lambda: _file_tail(log_path, log_lines))
        yield proc
    finally:
        await _stop(proc, label, term_timeout)


def _open_log(path: Path) -> BinaryIO:
    return open(path, "wb")


async def _wait_for_port(
    proc: asyncio.subprocess.Process, port: int, label: str, time_limit: float, log_tail: Callable[[], str]
) -> None:
    deadline = time.monotonic() + time_limit
    while True:
        if proc.returncode is not None:
            raise BenchError(f"{label} exited with {proc.returncode}:\n{log_tail()}")
        try:
            _, writer = await asyncio.open_connection(HOST, port)
        except OSError:
            if time.monotonic() > deadline:
                raise BenchError(
                    f"{label} is not listening on {port} after {time_limit:.0f} s:\n{log_tail()}"
                ) from None
            await asyncio.sleep(0.05)
            continue
        writer.close()
        await writer.wait_closed()
        return


async def _stop(proc: asyncio.subprocess.Process, label: str, term_timeout: float | None) -> None:
    """SIGTERM, and SIGKILL if it has not exited in ``term_timeout`` s; None: SIGKILL at once."""
    if proc.returncode is None:
        if term_timeout is None:
            proc.kill()
        else:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), term_timeout)
            except TimeoutError:
                log(f"{label} did not stop on SIGTERM; killing it")
                proc.kill()
    await proc.wait()


# -- S3 ------------------------------------------------------------------------


@dataclass(frozen=True)
class S3Endpoint:
    url: str
    access_key: str
    secret_key: str
    region: str

    def s3_config(self, bucket: str = "", **overrides: Any) -> S3Config:
        """The proxy's S3 settings for this endpoint; the reference client uses them too."""
        return S3Config(
            bucket=bucket,
            endpoint_url=self.url,
            region=self.region,
            addressing_style="path",
            **overrides,
        )

    def client(self, cfg: S3Config) -> Any:
        """An aioboto3 client context manager, configured as the proxy's."""
        session = aioboto3.Session(
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name=self.region,
        )
        return session.client("s3", endpoint_url=self.url, config=boto_config(cfg))


async def _run(argv: list[str], env: Mapping[str, str], time_limit: float) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *argv,
        env=dict(env),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), time_limit)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise BenchError(f"{' '.join(argv)} did not finish in {time_limit:.0f} s") from None
    assert proc.returncode is not None
    return proc.returncode, out.decode(errors="replace"), err.decode(errors="replace")


@contextlib.asynccontextmanager
async def real_s3(settings: Settings) -> AsyncIterator[S3Endpoint]:
    """The S3 server from STREAM_PROXY_BENCH_S3, else one started for the run in a
    temporary directory on free ports and purged afterwards."""
    if settings.s3_endpoint:
        log(f"using the S3 server at {settings.s3_endpoint}")
        yield S3Endpoint(settings.s3_endpoint, settings.access_key, settings.secret_key, settings.region)
        return
    start, stop = SHARED_S3 / "start-real-s3.sh", SHARED_S3 / "stop-real-s3.sh"
    if not start.exists():
        raise BenchError(f"{start} is missing; set STREAM_PROXY_BENCH_S3 to a running S3 server's URL")
    if os.geteuid() != 0:
        raise BenchError(
            f"starting the real S3 server ({start}) needs root: run as root, or start one "
            "yourself and set STREAM_PROXY_BENCH_S3=http://127.0.0.1:PORT"
        )
    data_dir = Path(tempfile.mkdtemp(prefix="stream-proxy-bench-rgw-"))
    port = free_port()
    mon_ports = free_port_range(2)
    osd_ports = free_port_range(OSD_PORT_COUNT, exclude=frozenset({port, mon_ports, mon_ports + 1}))
    env = {
        **os.environ,
        "S3_ACCESS_KEY": settings.access_key,
        "S3_SECRET_KEY": settings.secret_key,
        "S3_REGION": settings.region,
        "S3_MON_PORT": str(mon_ports),
        "S3_MON_V2_PORT": str(mon_ports + 1),
        "S3_OSD_PORT_MIN": str(osd_ports),
        "S3_OSD_PORT_MAX": str(osd_ports + OSD_PORT_COUNT - 1),
        # A whole run writes over 20 GiB, and RGW reclaims deleted objects only a
        # minute or two later: at the default 16 GiB the OSD filled up (97%, "full
        # status failsafe") after ~17 GiB of upload rows, and uploads then hung at RGW.
        # A sparse file: it takes only what is written, and is purged afterwards.
        "S3_BLOCK_SIZE": os.environ.get("S3_BLOCK_SIZE", "48G"),
    }
    log(f"starting the real S3 server in {data_dir} on port {port} (takes ~15-45 s)")
    try:
        code, out, err = await _run(["bash", str(start), str(data_dir), str(port)], env, time_limit=600)
        if code != 0:
            raise BenchError(f"the real S3 server did not start ({start}, exit {code}):\n{err[-3000:]}")
        last = (out.strip().splitlines() or [""])[-1]
        fields = dict(item.split("=", 1) for item in last.split() if "=" in item)
        url = fields.get("endpoint", f"http://{HOST}:{port}")
        yield S3Endpoint(url, settings.access_key, settings.secret_key, settings.region)
    finally:
        log("stopping the real S3 server")
        code, _, err = await _run(["bash", str(stop), str(data_dir), "--purge"], os.environ, time_limit=180)
        if code != 0:
            log(f"stop-real-s3.sh failed (exit {code}): {err[-1000:]}")


@contextlib.asynccontextmanager
async def fresh_bucket(client: Any) -> AsyncIterator[str]:
    """A new bucket, emptied (objects and unfinished multipart uploads) and deleted after."""
    name = f"bench-{uuid.uuid4().hex[:12]}"
    await client.create_bucket(Bucket=name)
    try:
        yield name
    finally:
        await empty_bucket(client, name)
        await client.delete_bucket(Bucket=name)


async def empty_bucket(client: Any, bucket: str) -> None:
    uploads = await client.list_multipart_uploads(Bucket=bucket)
    for upload in uploads.get("Uploads", []):
        await client.abort_multipart_upload(Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"])
    paginator = client.get_paginator("list_objects_v2")
    async for page in paginator.paginate(Bucket=bucket):
        for item in page.get("Contents", []):
            await client.delete_object(Bucket=bucket, Key=item["Key"])


# -- the proxy -------------------------------------------------------------------


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    # A JSON string is a valid TOML basic string for everything we write.
    return json.dumps(str(value))


def toml_text(tables: Mapping[str, Mapping[str, object]]) -> str:
    lines: list[str] = []
    for table, values in tables.items():
        lines.append(f"[{table}]")
        lines.extend(f"{name} = {_toml_value(value)}" for name, value in values.items())
        lines.append("")
    return "\n".join(lines)


def s3_storage_tables(cfg: S3Config) -> dict[str, dict[str, object]]:
    s3: dict[str, object] = {
        "bucket": cfg.bucket,
        "endpoint_url": cfg.endpoint_url or "",
        "region": cfg.region or "",
        "addressing_style": cfg.addressing_style,
        "part_size": int(cfg.part_size),
        "max_concurrency": cfg.max_concurrency,
        "memory_budget": int(cfg.memory_budget),
    }
    return {"storage": {"backend": "s3"}, "storage.s3": s3}


def local_storage_tables(root: Path) -> dict[str, dict[str, object]]:
    return {"storage": {"backend": "local"}, "storage.local": {"root": str(root)}}


def proc_status(pid: int) -> dict[str, int]:
    """The kB fields of /proc/PID/status (VmRSS, VmHWM, ...), in bytes."""
    fields: dict[str, int] = {}
    with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as fh:
        for line in fh:
            name, _, value = line.partition(":")
            parts = value.split()
            if len(parts) == 2 and parts[1] == "kB":
                fields[name] = int(parts[0]) * 1024
    return fields


@dataclass
class ProxyProcess:
    name: str
    proc: asyncio.subprocess.Process
    port: int
    log_path: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def rss(self) -> int:
        return proc_status(self.pid)["VmRSS"]

    def peak_rss(self) -> int:
        return proc_status(self.pid)["VmHWM"]

    def cpu_seconds(self) -> float:
        """User + system CPU time the process has used so far."""
        with open(f"/proc/{self.pid}/stat", encoding="ascii") as fh:
            fields = fh.read().rpartition(")")[2].split()
        # utime and stime are fields 14 and 15 of stat(5); fields[0] here is field 3.
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextlib.asynccontextmanager
async def run_proxy(
    name: str,
    workdir: Path,
    storage: Mapping[str, Mapping[str, object]],
    s3: S3Endpoint | None = None,
    extra_toml: str = "",
    workers: int = 1,
) -> AsyncIterator[ProxyProcess]:
    """``python -m proxy serve`` on a free port with a generated config (``extra_toml``
    appended: tables toml_text cannot write, such as [[auth.tokens]]) and ``workers``
    processes; stopped after (no drain delay: nothing balances load before it)."""
    port = free_port()
    config_path = workdir / f"proxy-{name}.toml"
    server = {"host": HOST, "port": port, "shutdown_timeout": 5, "drain_delay": 0, "workers": workers}
    tables = {"server": server, **storage}
    config_path.write_text(toml_text(tables) + extra_toml)
    # Only the generated file configures the proxy: drop overrides from our environment.
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAM_PROXY_")}
    if s3 is not None:
        env.update(
            AWS_ACCESS_KEY_ID=s3.access_key,
            AWS_SECRET_ACCESS_KEY=s3.secret_key,
            AWS_CONFIG_FILE="/dev/null",
            AWS_SHARED_CREDENTIALS_FILE="/dev/null",
        )
    log_path = workdir / f"proxy-{name}.log"
    argv = [sys.executable, "-m", "proxy", "serve", "--config", str(config_path), "--port", str(port)]
    async with server_process(
        argv,
        label=f"proxy {name}",
        port=port,
        time_limit=30,
        log_path=log_path,
        log_lines=30,
        capture_output=True,
        term_timeout=20,
        cwd=REPO,
        env=env,
    ) as proc:
        yield ProxyProcess(name, proc, port, log_path)


@contextlib.contextmanager
def temp_workdir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="stream-proxy-bench-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
