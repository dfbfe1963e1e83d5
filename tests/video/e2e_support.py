"""What the end-to-end video tests share: clips ffmpeg makes from its lavfi sources,
real ``stream-proxy serve`` and ``stream-proxy worker`` processes started from a
config file written for the test, the HTTP API they answer (PUT /files, the
/videos/ routes, /readyz), what is stored under a source's ``K.video/`` prefix,
and the process tree (a worker's ffmpeg children, found in /proc).

Real processes rather than the in-test app: what is tested is what an operator
runs (the CLI, the job loop started by ``serve`` or ``worker``, ffmpeg as a child
of the process that is killed), and a process can be SIGKILLed. Their output goes
to a file (a pipe nobody reads would stall a busy server), JSON lines, so that
the access log can be read back.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import quote

import aiohttp

from tests.conftest import Backend, free_port, require, wait_for_port

ROOT = Path(__file__).resolve().parents[2]
FFMPEG = shutil.which("ffmpeg") or "/usr/bin/ffmpeg"
FFPROBE = shutil.which("ffprobe") or "/usr/bin/ffprobe"
# A job of a few seconds of video on 2 shared cores, with other tests running: generous.
JOB_TIMEOUT = 180.0
POLL = 0.2


# -- clips -----------------------------------------------------------------------


@dataclass(frozen=True)
class Clip:
    path: Path
    content_type: str
    duration: float
    width: int
    height: int
    video_codec: str  # as ffprobe names it: "h264", "vp9"
    audio_codec: str  # "aac", "opus"


def require_ffmpeg() -> None:
    require(shutil.which("ffmpeg") is not None, "ffmpeg is not installed")
    require(shutil.which("ffprobe") is not None, "ffprobe is not installed")


def _encoders() -> set[str]:
    out = subprocess.run(
        [FFMPEG, "-hide_banner", "-encoders"], capture_output=True, text=True, check=True, timeout=30
    ).stdout
    # Lines look like " V....D libx264   libx264 H.264 / AVC ..." after a "------" rule.
    return {line.split()[1] for line in out.split("------", 1)[-1].splitlines() if len(line.split()) > 1}


def make_clip(
    path: Path, kind: str, seconds: float, width: int = 426, height: int = 240, *, rate: int = 25
) -> Clip:
    """An H.264/AAC MP4 (``kind`` "h264": the copy path) or a VP9/Opus WebM ("vp9":
    the encode path) of ``seconds``, a moving test pattern with a tone, a key frame
    every 2 s (so that copied segments can cut near 4 s)."""
    require_ffmpeg()
    encoders = _encoders()
    video = [
        "-f", "lavfi", "-i", f"testsrc2=size={width}x{height}:rate={rate}:duration={seconds}",
        "-f", "lavfi", "-i", f"sine=frequency=440:sample_rate=48000:duration={seconds}",
    ]  # fmt: skip
    if kind == "h264":
        require("libx264" in encoders, "this ffmpeg has no libx264 encoder")
        codec = ["-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p"]
        codec += ["-c:a", "aac", "-b:a", "64k"]
        clip = Clip(path, "video/mp4", seconds, width, height, "h264", "aac")
    elif kind == "vp9":
        require("libvpx-vp9" in encoders, "this ffmpeg has no libvpx-vp9 encoder")
        require("libopus" in encoders, "this ffmpeg has no libopus encoder")
        codec = ["-c:v", "libvpx-vp9", "-deadline", "realtime", "-cpu-used", "8", "-b:v", "1M"]
        codec += ["-pix_fmt", "yuv420p", "-c:a", "libopus", "-b:a", "64k"]
        clip = Clip(path, "video/webm", seconds, width, height, "vp9", "opus")
    else:
        raise ValueError(kind)
    args = [FFMPEG, "-nostdin", "-hide_banner", "-loglevel", "error", "-y", *video, *codec]
    args += ["-g", str(2 * rate), "-shortest", str(path)]
    done = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"ffmpeg could not make {path.name}:\n{done.stderr[-2000:]}"
    return clip


def ffprobe_json(url: str, *extra: str) -> dict[str, Any]:
    """ffprobe's format and streams of ``url`` (a file or an http URL)."""
    args = [FFPROBE, "-v", "error", "-print_format", "json", "-show_format", "-show_streams", *extra, url]
    done = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"ffprobe {url}: {done.stderr[-2000:]}"
    found: dict[str, Any] = json.loads(done.stdout)
    return found


def decode_all(url: str) -> None:
    """ffmpeg decodes every frame of ``url`` (an HLS master playlist over HTTP) without an error."""
    args = [FFMPEG, "-nostdin", "-v", "error", "-xerror", "-i", url, "-map", "0", "-f", "null", "-"]
    done = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and not done.stderr.strip(), f"decoding {url}: {done.stderr[-2000:]}"


def ffmpeg_wrapper(path: Path, calls: Path) -> Path:
    """A program to set as ``video.ffmpeg``: appends one JSON line per run to ``calls``
    (the pid of the process that started it and the arguments, which may hold line
    breaks: an HTTP header) and execs ffmpeg, so that a test counts the runs of every
    process sharing the bucket."""
    path.write_text(
        f"#!{sys.executable}\n"
        "import json, os, sys\n"
        f"with open({str(calls)!r}, 'a') as out:\n"
        "    out.write(json.dumps([os.getppid(), sys.argv[1:]]) + '\\n')\n"
        f"os.execv({FFMPEG!r}, [{FFMPEG!r}, *sys.argv[1:]])\n"
    )
    path.chmod(0o755)
    return path


def wrapper_calls(calls: Path) -> list[tuple[int, list[str]]]:
    """The runs the wrapper recorded: (parent pid, arguments)."""
    if not calls.exists():
        return []
    return [(int(parent), list(args)) for parent, args in map(json.loads, calls.read_text().splitlines())]


def is_hls_run(args: list[str]) -> bool:
    """An ffmpeg run that writes HLS (not the version check, not the poster)."""
    return any(a == "hls" for a in args) or any(a.endswith(".m3u8") for a in args)


# -- processes ---------------------------------------------------------------------


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return json.dumps(str(value))  # a JSON string is a TOML basic string


def toml_text(tables: Mapping[str, Mapping[str, object]]) -> str:
    lines: list[str] = []
    for table, values in tables.items():
        lines.append(f"[{table}]")
        lines += [f"{name} = {_toml_value(value)}" for name, value in values.items()]
        lines.append("")
    return "\n".join(lines)


def storage_tables(backend: Backend) -> dict[str, dict[str, object]]:
    storage = backend.config.storage
    if storage.backend == "local":
        return {"storage": {"backend": "local"}, "storage.local": {"root": str(storage.local.root)}}
    s3 = storage.s3
    table: dict[str, object] = {
        "bucket": s3.bucket,
        "endpoint_url": str(s3.endpoint_url),
        "region": str(s3.region),
        "addressing_style": "path",
        "max_attempts": 2,
        "connect_timeout": 5,
        "read_timeout": 60,
    }
    return {"storage": {"backend": "s3"}, "storage.s3": table}


@dataclass
class Process:
    """A running ``stream-proxy serve`` or ``worker``."""

    command: str
    proc: asyncio.subprocess.Process
    log_path: Path
    port: int | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def url(self) -> str:
        assert self.port is not None, f"{self.command} has no port"
        return f"http://127.0.0.1:{self.port}"

    def alive(self) -> bool:
        return self.proc.returncode is None

    def output(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def tail(self, lines: int = 40) -> str:
        return f"--- {self.command} {self.pid} log ---\n" + "\n".join(self.output().splitlines()[-lines:])

    def access_lines(self) -> list[dict[str, Any]]:
        """The access log's JSON lines."""
        found = []
        for line in self.output().splitlines():
            with contextlib.suppress(ValueError):
                item = json.loads(line)
                if isinstance(item, dict) and "status" in item and "path" in item:
                    found.append(item)
        return found

    async def kill(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()
        await self.proc.wait()

    async def stop(self, grace: float = 30.0) -> int:
        """SIGTERM, and SIGKILL if it has not ended within ``grace`` s; the exit status."""
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), grace)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        assert self.proc.returncode is not None
        return self.proc.returncode


def _env() -> dict[str, str]:
    # Only the config file written for the test configures the process.
    return {k: v for k, v in os.environ.items() if not k.startswith("STREAM_PROXY_")}


@contextlib.asynccontextmanager
async def stream_proxy(
    command: str, workdir: Path, name: str, backend: Backend, video: Mapping[str, object] | None = None
) -> AsyncIterator[Process]:
    """``stream-proxy serve`` (on a free port, yielded once it listens) or ``worker``
    with ``backend``'s storage and the ``video`` settings; ended afterwards (SIGTERM,
    then SIGKILL). The log is ``workdir/name.log``."""
    port = free_port() if command == "serve" else None
    tables: dict[str, dict[str, object]] = {
        "server": {"host": "127.0.0.1", "port": port or 0, "drain_delay": 0, "shutdown_timeout": 5},
        **storage_tables(backend),
        "log": {"format": "json", "level": "info", "access": True},
        "video": dict(video or {}),
    }
    config = _write(workdir / f"{name}.toml", toml_text(tables))
    log_path = workdir / f"{name}.log"
    argv = [sys.executable, "-m", "proxy", command, "--config", str(config)]
    if port is not None:
        argv += ["--port", str(port)]
    with _open_log(log_path) as out:
        proc = await asyncio.create_subprocess_exec(
            *argv, cwd=ROOT, env=_env(), stdin=asyncio.subprocess.DEVNULL, stdout=out, stderr=out
        )
    process = Process(command, proc, log_path, port)
    try:
        if port is not None:
            try:
                await asyncio.wait_for(_listening(process), 30)
            except TimeoutError:
                raise AssertionError(f"{command} does not listen on {port}\n{process.tail()}") from None
        else:
            await asyncio.sleep(1.0)
            assert process.alive(), f"{command} ended at once\n{process.tail()}"
        yield process
    finally:
        await process.stop()


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _open_log(path: Path) -> BinaryIO:
    return open(path, "wb")


async def _listening(process: Process) -> None:
    assert process.port is not None
    wait = asyncio.ensure_future(wait_for_port(process.port))
    ended = asyncio.ensure_future(process.proc.wait())
    await asyncio.wait({wait, ended}, return_when=asyncio.FIRST_COMPLETED)
    wait.cancel()
    ended.cancel()
    assert process.alive(), f"{process.command} exited with {process.proc.returncode}\n{process.tail()}"


def children(pid: int) -> list[int]:
    """Every descendant of ``pid`` (children, their children, ...)."""
    found: list[int] = []
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except FileNotFoundError:
        return found
    for task in tasks:
        with contextlib.suppress(FileNotFoundError):
            for child in (task / "children").read_text().split():
                found += [int(child), *children(int(child))]
    return found


def command_name(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except FileNotFoundError:
        return None


def running(pid: int) -> bool:
    """Whether ``pid`` exists and has not ended (a zombie has)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rpartition(")")[2].split()[0] not in ("Z", "X")


# -- the HTTP API ----------------------------------------------------------------


def key_path(key: str) -> str:
    return quote(key, safe="/")


@dataclass
class Api:
    """The proxy's HTTP API at ``url``."""

    url: str
    session: aiohttp.ClientSession

    async def put(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> str:
        """PUT the object; its ETag."""
        async with self.session.put(
            f"{self.url}/files/{key_path(key)}", data=data, headers={"Content-Type": content_type}
        ) as answer:
            body = await answer.text()
            assert answer.status == 201, body
            etag: str = json.loads(body)["etag"]
            return etag

    async def video(self, key: str) -> tuple[int, dict[str, Any]]:
        async with self.session.get(f"{self.url}/videos/{key_path(key)}") as answer:
            body = await answer.json(content_type=None)
            assert isinstance(body, dict), body
            return answer.status, body

    async def requeue(self, key: str) -> tuple[int, dict[str, Any]]:
        async with self.session.post(f"{self.url}/videos/{key_path(key)}") as answer:
            text = await answer.text()
            return answer.status, (json.loads(text) if text else {})

    async def ready(self) -> int:
        async with self.session.get(f"{self.url}/readyz") as answer:
            return answer.status

    async def wait_video(
        self, key: str, until: Callable[[dict[str, Any]], bool], within: float = JOB_TIMEOUT
    ) -> dict[str, Any]:
        """GET /videos/{key} until its answer satisfies ``until`` (for ``within`` s at most)."""
        deadline = time.monotonic() + within
        last: tuple[int, dict[str, Any]] = (0, {})
        while time.monotonic() < deadline:
            last = await self.video(key)
            if last[0] == 200 and until(last[1]):
                return last[1]
            await asyncio.sleep(POLL)
        raise AssertionError(f"{key}: no such state within {within:.0f} s; last answer {last}")

    async def wait_ended(self, key: str, within: float = JOB_TIMEOUT) -> dict[str, Any]:
        """The job's answer once it is done or failed."""
        return await self.wait_video(key, lambda v: v.get("state") in ("done", "failed"), within)


@contextlib.asynccontextmanager
async def api(process: Process) -> AsyncIterator[Api]:
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        yield Api(process.url, session)


def derived_keys(backend: Backend, key: str) -> list[str]:
    """What is stored under ``key``'s derived prefix ``key.video/``."""
    prefix = key + ".video/"
    stored = backend.view.keys()
    return [k for k in stored if k.startswith(prefix)]


def attempt_of(answer: dict[str, Any], key: str) -> str:
    """The attempt directory a done answer's master playlist is in."""
    hls = answer["hls"]
    prefix = f"/files/{key_path(key)}.video/"
    assert isinstance(hls, str) and hls.startswith(prefix) and hls.endswith("/master.m3u8"), answer
    attempt = hls[len(prefix) : -len("/master.m3u8")]
    assert attempt and "/" not in attempt, answer
    return attempt


def attempts_stored(backend: Backend, key: str) -> set[str]:
    """The attempt directories under ``key.video/``."""
    prefix = key + ".video/"
    return {k[len(prefix) :].split("/", 1)[0] for k in derived_keys(backend, key)}


def check_reason(reason: object, *secrets: str) -> None:
    """A failure's reason is for a user: a short sentence, no path, URL or setting."""
    assert isinstance(reason, str) and reason, reason
    assert len(reason) < 300, reason
    for leak in ("http://", "https://", "/dev/fd", "/tmp", "Traceback", *secrets):
        assert leak not in reason, f"the reason {reason!r} shows {leak!r}"
