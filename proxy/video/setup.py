"""The VideoService a process runs, from the config's [video] section and its
storage: the job store kept in that backend, and whether this process runs jobs."""

from __future__ import annotations

import logging
import shutil

from proxy.config import Config, VideoConfig
from proxy.jobs.base import JobStore
from proxy.jobs.local import LocalJobStore
from proxy.jobs.s3 import S3JobStore
from proxy.storage.base import Storage
from proxy.storage.local.objects import LocalStorage
from proxy.storage.s3.objects import S3Storage
from proxy.video.making import MakeSettings
from proxy.video.service import RunSettings, VideoService

log = logging.getLogger(__name__)


def video_service(config: Config, storage: Storage, *, run_jobs: bool) -> VideoService | None:
    """The service, or None when video is off: by the config, or because this
    process would run jobs and ffmpeg or ffprobe cannot be found (said once, as a
    warning: the page then plays the originals), or on a backend that keeps no jobs
    (a test's in-memory fake). A process that runs no jobs needs neither: it only
    queues them (media is told by its first bytes) and answers /videos/."""
    video = config.video
    if not video.enabled:
        return None
    missing = [program for program in (video.ffmpeg, video.ffprobe) if shutil.which(program) is None]
    if missing and run_jobs:
        log.warning(
            "video is off: %s not found (install ffmpeg, or set video.ffmpeg/video.ffprobe)",
            " and ".join(missing),
        )
        return None
    store = job_store(storage, video.lease)
    if store is None:
        log.debug("video is off: this storage keeps no jobs")
        return None
    run = RunSettings(video.max_jobs, video.poll_interval) if run_jobs else None
    return VideoService(storage, store, make_settings(video), run)


def job_store(storage: Storage, lease: float) -> JobStore | None:
    """The jobs of ``storage``'s backend, kept beside its objects."""
    if isinstance(storage, LocalStorage):
        return LocalJobStore(storage.root, lease)
    if isinstance(storage, S3Storage):
        return S3JobStore(storage, lease)
    return None


def make_settings(video: VideoConfig) -> MakeSettings:
    return MakeSettings(
        ffmpeg=video.ffmpeg,
        ffprobe=video.ffprobe,
        segment_seconds=video.segment_seconds,
        ladder=video.ladder,
        time_limit=video.time_limit,
        temp_dir=None if video.temp_dir is None else str(video.temp_dir),
        max_temp_bytes=video.max_temp,
        nice=video.nice,
    )
