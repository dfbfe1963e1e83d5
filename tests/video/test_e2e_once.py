"""Exactly once across processes: two ``stream-proxy worker`` processes share one
real RGW bucket with five queued jobs; every job ends done and each was made by
exactly one ffmpeg HLS run.

The jobs are queued by a ``serve`` process with ``video.jobs = false`` (PUT of five
clips), then both workers start together. ``video.ffmpeg`` is a wrapper script that
appends a line per run (its parent's pid and the arguments) to a file, then execs
ffmpeg, so the runs of both processes are counted in one place. Which worker made
which job is timing: that both made some is printed (and warned about when not),
not asserted, as it would make the test flaky.
"""

from __future__ import annotations

import asyncio
import warnings
from collections import Counter
from pathlib import Path

import pytest

from tests.conftest import Backend
from tests.video.e2e_support import (
    JOB_TIMEOUT,
    api,
    attempt_of,
    attempts_stored,
    ffmpeg_wrapper,
    is_hls_run,
    make_clip,
    require_ffmpeg,
    stream_proxy,
    wrapper_calls,
)

JOBS = 5


@pytest.mark.slow
@pytest.mark.alone
@pytest.mark.real_s3
async def test_two_workers_make_each_job_exactly_once(real_backend: Backend, tmp_path: Path) -> None:
    require_ffmpeg()
    # VP9: each job encodes for a moment, so that both workers are seen to take some.
    clip = await asyncio.to_thread(make_clip, tmp_path / "small.webm", "vp9", 6.0, 320, 240)
    calls = tmp_path / "ffmpeg-calls.txt"
    wrapper = ffmpeg_wrapper(tmp_path / "ffmpeg-wrapper.sh", calls)
    video = {"poll_interval": 0.5, "lease": 10, "ffmpeg": str(wrapper)}
    keys = [f"once/clip-{i}.webm" for i in range(JOBS)]
    data = clip.path.read_bytes()
    async with (
        stream_proxy("serve", tmp_path, "serve", real_backend, {**video, "jobs": False}) as served,
        api(served) as client,
    ):
        for key in keys:
            await client.put(key, data, clip.content_type)
        for key in keys:
            status, answer = await client.video(key)
            assert status == 200 and answer["state"] == "queued", (key, answer)
        assert not [args for _, args in wrapper_calls(calls) if is_hls_run(args)], "serve ran a job"

        async with (
            stream_proxy("worker", tmp_path, "worker-a", real_backend, video) as a,
            stream_proxy("worker", tmp_path, "worker-b", real_backend, video) as b,
        ):
            answers = await asyncio.gather(*(client.wait_ended(key, JOB_TIMEOUT * 2) for key in keys))
            for key, answer in zip(keys, answers, strict=True):
                assert answer["state"] == "done", f"{key}: {answer}\n{a.tail()}\n{b.tail()}"
            await asyncio.sleep(2)  # a second run of a job would start within a poll or two
            assert a.alive() and b.alive()
            assert "Traceback" not in a.output() + b.output(), f"{a.tail()}\n{b.tail()}"
            workers = {a.pid: "a", b.pid: "b"}
            # SIGTERM: a worker with nothing to do ends at once, with status 0.
            assert await a.stop(grace=15) == 0 and await b.stop(grace=15) == 0, f"{a.tail()}\n{b.tail()}"

    hls_runs = [(parent, args) for parent, args in wrapper_calls(calls) if is_hls_run(args)]
    names = {key: key.rsplit("/", 1)[1] for key in keys}
    per_key = Counter(key for key in keys for _, args in hls_runs if any(names[key] in a for a in args))
    assert per_key == Counter({key: 1 for key in keys}), (per_key, hls_runs)
    by_worker = Counter(workers.get(parent, f"pid {parent}") for parent, _ in hls_runs)
    assert set(by_worker) <= {"a", "b"}, by_worker
    for key, answer in zip(keys, answers, strict=True):
        assert attempts_stored(real_backend, key) == {attempt_of(answer, key)}, key
    print(f"HLS runs by worker: {dict(by_worker)}")
    if len(by_worker) < 2:
        warnings.warn(f"one worker made every job: {dict(by_worker)}", stacklevel=1)
