"""The [video] settings: read from the file and the environment, checked with one
line naming the setting, and made into the service a process runs (or none)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from proxy.config import Config, ConfigError, VideoConfig, load_config
from proxy.jobs.local import LocalJobStore
from proxy.storage.local.objects import LocalStorage
from proxy.video.setup import video_service
from tests.storage.memory import MemoryStorage
from tests.web.videos_support import require_ffmpeg


def _load(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> Config:
    path = tmp_path / "c.toml"
    path.write_text(text)
    return load_config(path, env or {})


def test_settings_from_the_file_and_the_environment(tmp_path: Path) -> None:
    text = '[video]\nladder = [360, 720]\nmax_temp = "64MiB"\ntemp_dir = "/var/tmp"\njobs = false\n'
    video = _load(tmp_path, text).video
    assert (video.ladder, video.max_temp, video.temp_dir, video.jobs) == (
        (360, 720),
        64 << 20,
        Path("/var/tmp"),
        False,
    )
    env = {"STREAM_PROXY_VIDEO_LADDER": "240, 480", "STREAM_PROXY_VIDEO_TEMP_DIR": ""}
    video = _load(tmp_path, "", env).video
    assert (video.ladder, video.temp_dir) == ((240, 480), None)
    assert _load(tmp_path, "").video == VideoConfig()


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("ladder = [361]", "video.ladder"),
        ("ladder = [100]", "video.ladder"),
        ("ladder = [8640]", "video.ladder"),
        ("ladder = [360, 360]", "video.ladder"),
        ('ladder = ["tall"]', "video.ladder"),
        ("ladder = [360.5]", "video.ladder"),
        ("max_jobs = 0", "video.max_jobs"),
        ("segment_seconds = 0", "video.segment_seconds"),
        ("time_limit = -1", "video.time_limit"),
        ('max_temp = "1MiB"', "video.max_temp"),
        ("nice = 20", "video.nice"),
        ("lease = 1", "video.lease"),
        ("poll_interval = 0", "video.poll_interval"),
        ('ffmpeg = " "', "video.ffmpeg"),
        ("colour = 1", "video.colour"),
    ],
)
def test_bad_settings_are_one_line_naming_them(tmp_path: Path, text: str, named: str) -> None:
    with pytest.raises(ConfigError) as caught:
        _load(tmp_path, f"[video]\n{text}\n")
    assert str(caught.value).startswith(named) and "\n" not in str(caught.value), caught.value


def test_the_service_of_a_process(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    require_ffmpeg()
    caplog.set_level(logging.INFO, "proxy.video")
    storage = LocalStorage(tmp_path)
    serving = video_service(Config(), storage, run_jobs=True)
    assert serving is not None and serving.runner is not None
    assert isinstance(serving.store, LocalJobStore)
    no_loop = video_service(Config(video=VideoConfig(jobs=False)), storage, run_jobs=False)
    assert no_loop is not None and no_loop.runner is None  # uploads still queue jobs
    # Off: by the config (silently), without ffmpeg (one warning), or on a backend
    # that keeps no jobs.
    assert video_service(Config(video=VideoConfig(enabled=False)), storage, run_jobs=True) is None
    assert caplog.records == []
    missing = Config(video=VideoConfig(ffprobe=str(tmp_path / "no-ffprobe")))
    assert video_service(missing, storage, run_jobs=True) is None
    (warning,) = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert "video is off" in warning.getMessage() and "no-ffprobe" in warning.getMessage()
    assert video_service(Config(), MemoryStorage(), run_jobs=True) is None
    # A serving machine with video.jobs = false needs no ffmpeg: it queues jobs for workers.
    queuing = video_service(missing, storage, run_jobs=False)
    assert queuing is not None and queuing.runner is None
