"""VideoService.work and look on the local backend with its real job store and real
ffmpeg, where a job and its source disagree: the source gone or replaced without a
hook (a crash lost it), a dead attempt's leftovers, a key too long for renditions."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from proxy.jobs.base import Claim, JobNotFound
from proxy.jobs.local import LocalJobStore
from proxy.storage.local.objects import LocalStorage
from proxy.video.making import MakeSettings
from proxy.video.outputs import TOO_LONG, attempt_prefix, derived_prefix
from proxy.video.service import VideoService
from tests.conftest import agen
from tests.web.videos_support import make_clip

KEY = "in/clip.mp4"


@pytest.fixture
async def service(tmp_path: Path) -> AsyncIterator[VideoService]:
    storage = LocalStorage(tmp_path / "data")
    await storage.start()
    videos = VideoService(storage, LocalJobStore(storage.root, lease=5.0), MakeSettings(segment_seconds=1))
    await videos.start()
    try:
        yield videos
    finally:
        await videos.close()
        await storage.close()


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return make_clip(tmp_path_factory.mktemp("clip") / "c.mp4", 1.0)


async def _claim(videos: VideoService) -> Claim:
    claim = await videos.store.claim()
    assert claim is not None
    return claim


async def _keys(videos: VideoService, prefix: str) -> list[str]:
    return [o.key for o in (await videos.storage.list(prefix)).objects]


async def test_a_job_whose_source_is_gone_is_removed(service: VideoService, clip: bytes) -> None:
    info = await service.storage.write(KEY, agen([clip]), content_type="video/mp4")
    await service.enqueue(KEY, info.etag)
    await service.storage.delete(KEY)  # no hook: as if the process died here
    await service.work(await _claim(service))
    with pytest.raises(JobNotFound):
        await service.store.get(KEY)


async def test_a_source_replaced_without_its_hook_is_healed(service: VideoService, clip: bytes) -> None:
    old = await service.storage.write(KEY, agen([clip]), content_type="video/mp4")
    await service.enqueue(KEY, old.etag)
    new = await service.storage.write(KEY, agen([clip, b"\0"]), content_type="video/mp4")
    # The runner finds the job's version gone: the new one is queued instead.
    await service.work(await _claim(service))
    job = await service.store.get(KEY)
    assert (job.state, job.source_etag) == ("queued", new.etag)
    # GET /videos/ does the same when it looks first; text instead of a video: no job.
    text = await service.storage.write(KEY, agen([b"text"]), content_type="text/plain")
    assert text.etag != new.etag
    with pytest.raises(JobNotFound):
        await service.look(KEY)
    with pytest.raises(JobNotFound):
        await service.store.get(KEY)
    third = await service.storage.write(KEY, agen([clip]), content_type="video/mp4")
    await service.enqueue(KEY, new.etag)  # a record of an older version
    assert (await service.look(KEY)).source_etag == third.etag


async def test_a_dead_attempts_files_are_removed_by_the_next(service: VideoService, clip: bytes) -> None:
    info = await service.storage.write(KEY, agen([clip]), content_type="video/mp4")
    await service.enqueue(KEY, info.etag)
    first = await _claim(service)
    stray = attempt_prefix(KEY, first.job.attempt or "")
    await service.storage.write(stray + "v0/seg00001.m4s", agen([b"half"]), content_type=None)
    await first.release()  # as a stopping process does
    second = await _claim(service)
    assert second.previous_attempt == first.job.attempt
    await service.work(second)
    job = await service.store.get(KEY)
    assert job.state == "done", job
    assert await _keys(service, stray) == []
    made = await _keys(service, derived_prefix(KEY))
    assert made and all(k.startswith(attempt_prefix(KEY, job.attempt or "")) for k in made)
    assert job.result["hls"] in made and job.result["poster"] in made


async def test_a_key_too_long_for_renditions_fails_plainly(service: VideoService, clip: bytes) -> None:
    key = "long/" + "n" * 248 + ".mp4"  # valid, but its ".video" segment is over 255 bytes
    info = await service.storage.write(key, agen([clip]), content_type="video/mp4")
    await service.enqueue(key, info.etag)
    await service.work(await _claim(service))
    job = await service.store.get(key)
    assert (job.state, job.reason) == ("failed", TOO_LONG)
    await service.forget(key)  # no derived prefix can exist: nothing to do, no error
    with pytest.raises(JobNotFound):
        await service.store.get(key)
