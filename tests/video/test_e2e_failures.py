"""Bad input end to end, through a real ``stream-proxy serve`` running its own jobs:
a text file uploaded as ``video.mp4``, a zero-byte file and a truncated MP4.

Neither the text nor the empty file queues a job (the upload hook sniffs the bytes,
not the name): GET /videos/K is 404. Asked for on demand (POST /videos/K), each
fails with "not a video". The truncated MP4 (its ``moov`` was at the end, which
is cut off) looks like an MP4, so its upload queues a job, which fails with a
reason for a user. In every case the process is alive and ready, its log has no
traceback, nothing is stored under ``K.video/``, and the job's temporary files
are gone. On both backends.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from tests.conftest import Backend
from tests.video.e2e_support import (
    api,
    check_reason,
    derived_keys,
    make_clip,
    require_ffmpeg,
    stream_proxy,
)


async def test_text_empty_and_truncated_uploads_fail_cleanly(backend: Backend, tmp_path: Path) -> None:
    require_ffmpeg()
    clip = await asyncio.to_thread(make_clip, tmp_path / "whole.mp4", "h264", 6.0, 320, 240)
    whole = clip.path.read_bytes()
    temp = tmp_path / "video-tmp"
    temp.mkdir()
    text, empty, truncated = "bad/video.mp4", "bad/empty.mp4", "bad/truncated.mp4"
    secrets = [str(tmp_path)]
    if backend.config.storage.backend == "s3":
        secrets += [backend.config.storage.s3.bucket, str(backend.config.storage.s3.endpoint_url)]
    video = {"poll_interval": 0.5, "temp_dir": str(temp)}
    async with stream_proxy("serve", tmp_path, "serve", backend, video) as served, api(served) as client:
        await client.put(text, b"This is not a video, whatever its name says.\n" * 200, "video/mp4")
        await client.put(empty, b"", "video/mp4")
        await client.put(truncated, whole[: len(whole) // 2], "video/mp4")

        failed = await client.wait_ended(truncated)
        assert failed["state"] == "failed", failed
        check_reason(failed["reason"], *secrets)
        assert failed["reason"] != "internal error", f"{failed}\n{served.tail()}"
        assert failed["hls"] is None and failed["poster"] is None, failed
        print(f"truncated MP4: failed {failed['reason']!r}")

        # No job for what is not a video by its bytes, whatever its name and type say.
        for key in (text, empty):
            status, answer = await client.video(key)
            assert status == 404 and answer.get("error") == "not_found", (key, answer)
        for key in (text, empty):
            status, answer = await client.requeue(key)
            assert status == 202, (key, status, answer)
        for key in (text, empty):
            answer = await client.wait_ended(key)
            assert answer["state"] == "failed" and answer["reason"] == "not a video", (key, answer)
            assert answer["hls"] is None, answer

        # POST for a key with no object: 404, nothing queued.
        status, answer = await client.requeue("bad/missing.mp4")
        assert status == 404 and set(answer) >= {"error", "message", "request_id"}, answer

        await asyncio.sleep(1)  # anything still running after the jobs ended would show now
        assert served.alive() and await client.ready() == 200, served.tail()
        for key in (text, empty, truncated):
            assert derived_keys(backend, key) == [], (key, derived_keys(backend, key))
        assert "Traceback" not in served.output(), served.tail(80)
    left = [str(p.relative_to(temp)) for p in temp.rglob("*") if p.is_file()]
    assert left == [], f"temporary files left: {left}"
