"""`stream-proxy worker` (proxy/serving/worker.py): the video job loop alone, as a real
process on a local root where a job was queued as `serve` with video.jobs = false
would queue it."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

from proxy.jobs.local import LocalJobStore
from proxy.storage.local.objects import LocalStorage
from tests.conftest import ROOT, agen
from tests.test_cli import run_cli
from tests.web.videos_support import make_clip

KEY = "in/clip.mp4"
Worker = tuple[LocalStorage, LocalJobStore, asyncio.subprocess.Process]


@contextlib.asynccontextmanager
async def _worker_with_a_queued_clip(tmp_path: Path, **env: str) -> AsyncIterator[Worker]:
    """A one-second clip stored and its job queued, and a worker process (with ``env``
    on top of the environment) started on the same root."""
    clip = make_clip(tmp_path / "clip.mp4", 1.0)
    storage = LocalStorage(tmp_path / "data")
    await storage.start()
    store = LocalJobStore(storage.root, lease=5.0)
    await store.start()
    try:
        info = await storage.write(KEY, agen([clip]), content_type="video/mp4")
        await store.enqueue(KEY, info.etag)
        settings = {
            "STREAM_PROXY_STORAGE_LOCAL_ROOT": str(storage.root),
            "STREAM_PROXY_VIDEO_POLL_INTERVAL": "0.2",
        }
        proc = await asyncio.create_subprocess_exec(
            *[sys.executable, "-m", "proxy", "worker", "--config", "config.toml"],
            cwd=ROOT,
            env={**os.environ, **settings, **env},
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        try:
            yield storage, store, proc
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    finally:
        await store.close()
        await storage.close()


async def _stop(proc: asyncio.subprocess.Process) -> None:
    """SIGTERM: the worker exits 0, with no traceback."""
    proc.send_signal(signal.SIGTERM)
    output = (await asyncio.wait_for(proc.communicate(), 40))[0].decode()
    assert proc.returncode == 0, output
    assert "Traceback" not in output


def _listening_sockets(pid: int) -> set[str]:
    """The inodes of ``pid``'s sockets that listen for TCP connections."""
    mine = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                mine.add(target[8:-1])
    listening = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A":  # LISTEN
                listening.add(fields[9])
    return mine & listening


async def test_worker_runs_a_queued_job_without_a_listener_and_stops_on_sigterm(tmp_path: Path) -> None:
    async with _worker_with_a_queued_clip(tmp_path) as (storage, store, proc):
        try:
            async with asyncio.timeout(120):
                while (job := await store.get(KEY)).state in ("queued", "running"):
                    assert _listening_sockets(proc.pid) == set()
                    await asyncio.sleep(0.2)
            assert job.state == "done", job
            assert (storage.root / job.result["hls"]).is_file()
        finally:
            await _stop(proc)


def test_worker_without_video_is_one_line(tmp_path: Path) -> None:
    env = {"STREAM_PROXY_STORAGE_LOCAL_ROOT": str(tmp_path / "data"), "STREAM_PROXY_VIDEO_ENABLED": "false"}
    result = run_cli("worker", "--config", "config.toml", env=env)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "video.enabled" in result.stderr, result.stderr


async def test_worker_stopped_mid_job_gives_it_back_and_leaves_no_files(tmp_path: Path) -> None:
    # An ffmpeg that stalls before packaging HLS: the job is caught running, its poster stored.
    wrapper = tmp_path / "slow-ffmpeg"
    wrapper.write_text(
        f'#!/bin/sh\ncase "$*" in *-hls_time*) sleep 120;; esac\nexec {shutil.which("ffmpeg")} "$@"\n'
    )
    wrapper.chmod(0o755)
    async with _worker_with_a_queued_clip(tmp_path, STREAM_PROXY_VIDEO_FFMPEG=str(wrapper)) as (
        storage,
        store,
        proc,
    ):
        derived = storage.root / "in" / "clip.mp4.video"
        try:
            async with asyncio.timeout(60):
                while not list(derived.rglob("poster.jpg")):
                    await asyncio.sleep(0.1)
            assert (await store.get(KEY)).state == "running"
        finally:
            await _stop(proc)
        # Given back at once (not left to the lease), and nothing half-made stays.
        assert (await store.get(KEY)).state == "queued"
        assert [p for p in derived.rglob("*") if p.is_file()] == []
