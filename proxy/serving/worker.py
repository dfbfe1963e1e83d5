"""``stream-proxy worker``: the video job loop alone, with no HTTP listener, so that
ffmpeg can run on other machines than those serving uploads. Jobs are kept in the
backend (proxy/jobs/), so workers and `serve` processes sharing it share the work.

SIGTERM or SIGINT stops it: no new job is claimed, running ones are stopped (their
ffmpeg killed, their half-made files removed) and their claims released, so that
another process takes them at once rather than after the lease. The exit status is 0.
"""

from __future__ import annotations

import asyncio
import logging
import signal

from proxy.app import BACKENDS
from proxy.config import Config
from proxy.serving import StartError
from proxy.video.setup import video_service

log = logging.getLogger(__name__)


async def work(config: Config) -> None:
    """Run video jobs until SIGTERM or SIGINT. Raises StartError."""
    storage = BACKENDS[config.storage.backend](config).objects
    videos = video_service(config, storage, run_jobs=True)
    if videos is None:
        raise StartError(
            "no video jobs to run: video.enabled is false, or ffmpeg/ffprobe were not found "
            "(set video.ffmpeg and video.ffprobe)"
        )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        await storage.start()
    except OSError as exc:
        raise StartError(f"cannot prepare the storage: {exc.strerror or exc}") from None
    try:
        await videos.start()
        log.info("running video jobs (at most %d at once)", config.video.max_jobs)
        await stop.wait()
        log.info("stopping: running jobs are released")
    finally:
        await videos.close()
        await storage.close()
    log.info("stopped")
