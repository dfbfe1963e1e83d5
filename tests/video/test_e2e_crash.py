"""A worker killed in the middle of a job: the job is taken over and made once, cleanly.

A ``stream-proxy serve`` with ``video.jobs = false`` takes the upload (a VP9 clip,
so the job encodes and takes a while) and answers the API; a ``stream-proxy
worker`` sharing its storage claims the job. Once the job runs, has reported
progress and has stored some of its files, the worker is SIGKILLed. A second worker
takes the job over (at once on the local backend, whose claim is a lock the dead
process no longer holds; after the short lease on S3), it ends done, and under
``K.video/`` only the final attempt's directory is left: nothing of the killed
attempt. ffmpeg then decodes the whole HLS through the proxy's downloads.

ffmpeg runs in a process group of its own, so the SIGKILL of the worker does not
reach the group; it dies with its parent all the same (proxy/video/ffmpeg.py:
PR_SET_PDEATHSIG through setpriv), which is checked here: an ffmpeg still running
ORPHAN_GRACE seconds after its worker was killed fails the test (it is killed first,
and the message says how much it wrote meanwhile). The killed worker's temporary
directory stays (nothing is left to remove it); the second worker's is removed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from pathlib import Path

import pytest

from tests.conftest import Backend, backend_for
from tests.video.e2e_support import (
    Clip,
    api,
    attempt_of,
    attempts_stored,
    children,
    command_name,
    decode_all,
    derived_keys,
    ffprobe_json,
    make_clip,
    require_ffmpeg,
    running,
    stream_proxy,
)

SECONDS = 30.0
LEASE = 4.0
ORPHAN_GRACE = 3.0  # seconds an ffmpeg may take to end after its worker (PR_SET_PDEATHSIG: at once)


@pytest.fixture(scope="module")
def long_clip(tmp_path_factory: pytest.TempPathFactory) -> Clip:
    """Long and large enough that its encode takes several seconds here."""
    require_ffmpeg()
    return make_clip(tmp_path_factory.mktemp("crash-clip") / "long.webm", "vp9", SECONDS, 854, 480)


@pytest.fixture(params=["local", pytest.param("rgw", marks=pytest.mark.real_s3)])
def crash_backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    if request.param == "local":
        return backend_for("local", tmp_path, None, None)
    backend: Backend = request.getfixturevalue("real_backend")
    return backend


def _tree_bytes(root: Path) -> int:
    total = 0
    for path in root.rglob("*"):
        with contextlib.suppress(FileNotFoundError):  # ffmpeg renames its temp_file segments
            total += path.stat().st_size if path.is_file() else 0
    return total


def _ffmpegs(pid: int) -> list[int]:
    return [p for p in children(pid) if command_name(p) in ("ffmpeg", "ffprobe")]


@pytest.mark.slow
@pytest.mark.alone
async def test_killed_worker_job_is_taken_over(
    crash_backend: Backend, long_clip: Clip, tmp_path: Path
) -> None:
    backend = crash_backend
    key = "videos/long.webm"
    temp = tmp_path / "video-tmp"
    temp.mkdir()
    video = {"poll_interval": 0.5, "lease": LEASE, "temp_dir": str(temp)}
    async with (
        stream_proxy("serve", tmp_path, "serve", backend, {**video, "jobs": False}) as served,
        api(served) as client,
    ):
        await client.put(key, long_clip.path.read_bytes(), long_clip.content_type)
        status, queued = await client.video(key)
        assert status == 200 and queued["state"] == "queued", queued

        async with stream_proxy("worker", tmp_path, "worker-1", backend, video) as first:
            # Running, with progress, its ffmpeg making the HLS, a segment already stored.
            running_answer = await client.wait_video(
                key,
                lambda v: (
                    v["state"] == "running"
                    and v["progress"] > 0
                    and any(k.endswith(".m4s") for k in derived_keys(backend, key))
                    and bool(_ffmpegs(first.pid))
                ),
            )
            killed_attempts = attempts_stored(backend, key)
            stray = derived_keys(backend, key)
            ffmpegs = _ffmpegs(first.pid)
            os.kill(first.pid, signal.SIGKILL)
            await first.proc.wait()
            killed_at = time.monotonic()
        status, after_kill = await client.video(key)
        assert after_kill["state"] == "running", (
            f"the job was no longer running when its worker was killed ({after_kill}): "
            f"make the clip longer\n{first.tail()}"
        )
        assert ffmpegs, f"no ffmpeg was running under the worker\n{first.tail()}"

        # No ffmpeg of the dead worker goes on for long.
        written = _tree_bytes(temp)
        deadline = time.monotonic() + ORPHAN_GRACE
        while any(running(p) for p in ffmpegs) and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        orphans = [p for p in ffmpegs if running(p)]
        for pid in orphans:
            os.kill(pid, signal.SIGKILL)
        grown = _tree_bytes(temp) - written
        dead_temp = set(temp.iterdir())  # the killed worker's: nobody is left to remove it
        assert not orphans, (
            f"ffmpeg {orphans} outlived its SIGKILLed worker by {ORPHAN_GRACE:.0f} s, writing "
            f"{grown} bytes more into the temporary directory meanwhile"
        )

        async with stream_proxy("worker", tmp_path, "worker-2", backend, video) as second:
            done = await client.wait_ended(key)
            assert done["state"] == "done", f"{done}\n{second.tail()}"
            taken_over_after = time.monotonic() - killed_at
            assert "Traceback" not in second.output(), second.tail()

        # The second worker removed its own temporary files.
        assert set(temp.iterdir()) <= dead_temp, sorted(map(str, temp.iterdir()))
        final = attempt_of(done, key)
        assert final not in killed_attempts, (final, killed_attempts)
        # Only the final attempt's files: the killed attempt's are gone.
        left = derived_keys(backend, key)
        assert attempts_stored(backend, key) == {final}, left
        assert not set(stray) & set(left), stray

        # The HLS plays: every frame decodes, through the proxy's downloads.
        master = served.url + done["hls"]
        probed = await asyncio.to_thread(ffprobe_json, master)
        assert abs(float(probed["format"]["duration"]) - SECONDS) < 1.0, probed["format"]
        kinds = {s["codec_type"] for s in probed["streams"]}
        assert {"video", "audio"} <= kinds, probed["streams"]
        await asyncio.to_thread(decode_all, master)
    print(
        f"killed at progress {running_answer['progress']:.1f}; taken over and done "
        f"{taken_over_after:.1f} s after the kill; "
        f"left in temp_dir: {sorted(str(p.relative_to(temp)) for p in temp.rglob('*'))}"
    )
