"""The wall time of a video job through the proxy against the same ffmpeg run by hand
(``make bench``'s video_hls).

A 60 s 720p H.264/AAC clip (the copy path) and the same picture as VP9/Opus WebM (the
encode path) are made once per run with ffmpeg's lavfi sources, in the bench's
temporary directory. A proxy process on the benchmark's RGW bucket runs the jobs
itself (``[video] jobs = true``). A proxy round PUTs the clip and times from the end of
the upload to GET /videos/K answering done (polled every POLL seconds): ffprobe, the
poster and thumbnail, the HLS, every file uploaded to RGW, the records written. A
reference round runs the maker's own HLS command, built by proxy.rules.video from the
same probe (so both sides run the same arguments), on the clip as a local file into
a local temporary directory. Rounds alternate which side goes first; the rows give
the medians and the median of the per-round ratios. Two rows per clip: the maker's
HLS step (its time from the proxy's "video made ... (poster P s, HLS H s)" log line:
ffmpeg reading the source by Range from the bucket, segments uploaded as they are
made, playlists) against the HLS command by hand; and the whole job against both of
the maker's commands by hand (the poster command is run before the HLS command in
each reference round, timed apart).

The issue's target is for the copy path: its HLS step within COPY_MAX_RATIO of the
hand-run command (the job's other steps, probe and poster, have no hand-run twin in
the issue's comparison; the whole job's row shows them). The encode path's rows
inform; their time is ffmpeg's encode, alike on both.
``BENCH_VIDEO_ROUNDS`` (default 3) sets the rounds, as an encode round takes a while.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp

from bench.context import BenchContext, alternating
from bench.report import Row, compared_row
from bench.servers import ProxyProcess, log, run_proxy, s3_storage_tables
from bench.settings import BenchError
from proxy.rules import video as video_rules
from proxy.video.making import MakeSettings, Source, probe

SECONDS = 60
WIDTH, HEIGHT = 1280, 720
COPY_MAX_RATIO = 1.3
POLL = 0.1  # seconds between GET /videos/K while a job runs
JOB_LIMIT = 1800.0  # seconds a job may take before the measurement fails
ROUNDS_VARIABLE = "BENCH_VIDEO_ROUNDS"
# The proxy's [video] settings: its jobs wake at the upload; the rest are the defaults.
VIDEO_TOML = "[video]\njobs = true\npoll_interval = 0.5\n"


@dataclass(frozen=True)
class Clip:
    path: Path
    content_type: str
    label: str  # the row's name for it


def _rounds() -> int:
    text = os.environ.get(ROUNDS_VARIABLE, "3")
    if not text.isdigit() or int(text) < 1:
        raise BenchError(f"{ROUNDS_VARIABLE}: expected a whole number of at least 1, got {text!r}")
    return int(text)


async def _run(argv: list[str], time_limit: float = JOB_LIMIT) -> None:
    quiet, pipe = asyncio.subprocess.DEVNULL, asyncio.subprocess.PIPE
    proc = await asyncio.create_subprocess_exec(*argv, stdin=quiet, stdout=quiet, stderr=pipe)
    try:
        _, err = await asyncio.wait_for(proc.communicate(), time_limit)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise BenchError(f"{argv[0]} did not finish in {time_limit:.0f} s") from None
    if proc.returncode != 0:
        message = err.decode(errors="replace")[-1500:]
        raise BenchError(f"{' '.join(argv[:3])} ... failed ({proc.returncode}): {message}")


async def make_clips(workdir: Path) -> tuple[Clip, Clip]:
    """The H.264/AAC MP4 and the VP9/Opus WebM, made once per run (kept in ``workdir``)."""
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        raise BenchError("ffmpeg is not installed (Debian's ffmpeg package)")
    out = workdir / "video"
    await asyncio.to_thread(out.mkdir, exist_ok=True)
    sources = [
        "-f", "lavfi", "-i", f"testsrc2=size={WIDTH}x{HEIGHT}:rate=30:duration={SECONDS}",
        "-f", "lavfi", "-i", f"sine=frequency=440:sample_rate=48000:duration={SECONDS}",
    ]  # fmt: skip
    h264 = Clip(out / "h264-720p-60s.mp4", "video/mp4", f"{SECONDS} s 720p H.264/AAC, copy path")
    vp9 = Clip(out / "vp9-720p-60s.webm", "video/webm", f"{SECONDS} s 720p VP9/Opus, encode path")
    codecs = {
        h264: ["-c:v", "libx264", "-preset", "veryfast", "-b:v", "3M", "-pix_fmt", "yuv420p", "-c:a", "aac"],
        vp9: ["-c:v", "libvpx-vp9", "-deadline", "realtime", "-cpu-used", "8", "-c:a", "libopus"],
    }
    for clip, codec in codecs.items():
        if not clip.path.exists():
            log(f"video_hls: making {clip.path.name}")
            base = [ffmpeg, "-nostdin", "-hide_banner", "-loglevel", "error", "-y", *sources, *codec]
            await _run([*base, "-g", "60", "-shortest", str(clip.path)])
    return h264, vp9


@dataclass
class Parts:
    """Where a job's time goes, per round: the maker's own time and its HLS step (from
    the proxy's log: ffmpeg reading the source by Range, its segments uploaded as they
    are made, the playlists), and the poster command by hand."""

    made: list[float] = field(default_factory=list)
    hls: list[float] = field(default_factory=list)
    poster_by_hand: list[float] = field(default_factory=list)


def _maker_command(settings: MakeSettings, args: list[str]) -> list[str]:
    # As proxy/video/making.py runs ffmpeg, at the maker's niceness too
    # (proxy/video/ffmpeg.py): on an idle machine that costs nothing.
    command = [settings.ffmpeg, "-v", "error", "-nostdin", "-hide_banner", *args]
    return ["nice", "-n", str(settings.nice), *command] if settings.nice else command


def hls_command(settings: MakeSettings, source: Source, info: dict[str, Any], out: Path) -> list[str]:
    """The maker's own HLS command line (proxy.rules.video's builders), writing into ``out``
    (its -progress lines go to /dev/null here)."""
    copy = video_rules.can_copy_video(info)
    renditions = video_rules.plan_renditions(info, settings.ladder, copy)
    input_ = video_rules.input_args(source.url, source.headers)
    args = video_rules.hls_args(
        info, input_, renditions, str(out), settings.segment_seconds, threads=settings.threads
    )
    return _maker_command(settings, ["-progress", "pipe:1", "-nostats", *args])


def poster_command(settings: MakeSettings, source: Source, info: dict[str, Any], out: Path) -> list[str]:
    input_ = video_rules.input_args(source.url, source.headers)
    return _maker_command(
        settings, video_rules.poster_args(info, input_, str(out / "poster.jpg"), str(out / "thumb.jpg"))
    )


async def hand_run(
    settings: MakeSettings, clip: Clip, workdir: Path, parts: Parts
) -> Callable[[], Awaitable[float]]:
    """The maker's HLS command for ``clip`` as a local file, as a timed run (the poster
    command is run and timed too, apart, into ``parts``)."""
    source = Source(str(clip.path))
    info = await probe(settings, source)

    async def run() -> float:
        out = Path(await asyncio.to_thread(tempfile.mkdtemp, prefix="hls-", dir=workdir))
        try:
            start = time.perf_counter()
            await _run(poster_command(settings, source, info, out))
            parts.poster_by_hand.append(time.perf_counter() - start)
            start = time.perf_counter()
            await _run(hls_command(settings, source, info, out))
            return time.perf_counter() - start
        finally:
            await asyncio.to_thread(shutil.rmtree, out, True)

    return run


Timed = Callable[[str], Awaitable[float]]
MADE = re.compile(r"video made: [^\n]*? in ([0-9.]+) s \(poster [0-9.]+ s, HLS ([0-9.]+) s\)")


async def through_proxy(ctx: BenchContext, server: ProxyProcess, clip: Clip, parts: Parts) -> Timed:
    data = await asyncio.to_thread(clip.path.read_bytes)

    async def run(key: str) -> float:
        url = f"{server.url}/files/{quote(key)}"
        made_before = len(await _made(server))
        async with ctx.http.put(url, data=data, headers={"Content-Type": clip.content_type}) as answer:
            if answer.status != 201:
                raise BenchError(f"PUT {key}: HTTP {answer.status}: {(await answer.text())[:300]}")
        uploaded = time.perf_counter()
        state = await _wait_done(ctx.http, server, key)
        seconds = time.perf_counter() - uploaded
        if state.get("state") != "done":
            raise BenchError(f"the job of {key} ended {state}")
        made = await _made(server)
        if len(made) > made_before:
            parts.made.append(made[-1][0])
            parts.hls.append(made[-1][1])
        async with ctx.http.delete(f"{server.url}/videos/{quote(key)}"):
            pass
        async with ctx.http.delete(url):
            pass
        return seconds

    return run


async def _made(server: ProxyProcess) -> list[tuple[float, float]]:
    """The maker's own times so far and their HLS steps, from the proxy's log lines
    "video made: ... in X s (poster P s, HLS H s)"."""
    text = await asyncio.to_thread(server.log_path.read_text, errors="replace")
    return [(float(m[1]), float(m[2])) for m in MADE.finditer(text)]


async def _wait_done(http: aiohttp.ClientSession, server: ProxyProcess, key: str) -> dict[str, Any]:
    deadline = time.monotonic() + JOB_LIMIT
    while time.monotonic() < deadline:
        async with http.get(f"{server.url}/videos/{quote(key)}") as answer:
            body: dict[str, Any] = await answer.json(content_type=None)
        if answer.status == 200 and body.get("state") in ("done", "failed"):
            return body
        await asyncio.sleep(POLL)
    raise BenchError(f"the job of {key} did not end in {JOB_LIMIT:.0f} s")


def _rows(clip: Clip, proxy: list[float], hand: list[float], parts: Parts, target: float | None) -> list[Row]:
    """Two rows: the maker's HLS step against the same HLS command by hand (the target's
    row, as both run that command and the job's other steps have no hand-run twin), and
    the whole job against the maker's two commands (poster, HLS) by hand."""
    both = [p + h for p, h in zip(parts.poster_by_hand, hand, strict=True)]
    rows = []
    if len(parts.hls) == len(hand):
        rows.append(_compared(f"video HLS step, {clip.label}", parts.hls, hand, target,
            "the maker's ffmpeg HLS command run by hand on a local copy of the clip, into a local "
            "directory (the step: ffmpeg reading the source by Range from the bucket, each "
            "segment uploaded as it is made, the playlists; from the proxy's log)"))  # fmt: skip
    notes = []
    if parts.made:
        notes.append(
            f"video job, {clip.label}: the maker's own time (medians) {statistics.median(parts.made):.2f} s "
            f"of the job's {statistics.median(proxy):.2f} s"
        )
    whole = _compared(f"video job, {clip.label}", proxy, both, None,
        "the maker's two ffmpeg commands (poster, HLS) run by hand on a local copy of the clip "
        "(the job: from the end of the PUT to GET /videos/K answering done, polled every "
        f"{POLL} s: ffprobe, poster, HLS, uploads, job records)", notes)  # fmt: skip
    return [*rows, whole]


def _compared(
    name: str,
    proxy: list[float],
    hand: list[float],
    target: float | None,
    reference: str,
    notes: Sequence[str] = (),
) -> Row:
    ratios = [p / h for p, h in zip(proxy, hand, strict=True)]
    ratio = statistics.median(ratios)
    return compared_row(
        name,
        f"{statistics.median(proxy):.2f} s",
        f"{statistics.median(hand):.2f} s",
        f"{ratio:.2f}x" + ("" if target is None else f" (<= {target:.2f}x)"),
        None if target is None else ratio <= target,
        reference_name=reference,
        unit="s",
        proxy_rounds=[f"{v:.2f}" for v in proxy],
        reference_rounds=[f"{v:.2f}" for v in hand],
        notes=[f"{name}: ratio per round {[round(r, 2) for r in ratios]}", *notes],
    )


async def video_hls(ctx: BenchContext) -> list[Row]:
    rounds = _rounds()
    h264, vp9 = await make_clips(ctx.workdir)
    settings = MakeSettings()
    storage = s3_storage_tables(ctx.s3_config())
    rows: list[Row] = []
    async with run_proxy("video-hls", ctx.workdir, storage, ctx.s3, extra_toml=VIDEO_TOML) as server:
        for clip, target in ((h264, COPY_MAX_RATIO), (vp9, None)):
            parts = Parts()
            proxy, hand = await _rounds_of(ctx, server, settings, clip, rounds, parts, warmup=clip is h264)
            rows += _rows(clip, proxy, hand, parts, target)
    return rows


async def _rounds_of(
    ctx: BenchContext,
    server: ProxyProcess,
    settings: MakeSettings,
    clip: Clip,
    rounds: int,
    parts: Parts,
    warmup: bool,
) -> tuple[list[float], list[float]]:
    """Seconds per round of the job through the proxy and of the command by hand."""
    proxy_run = await through_proxy(ctx, server, clip, parts)
    by_hand = await hand_run(settings, clip, ctx.workdir, parts)
    if warmup:  # the process's imports, connections and caches, once
        await proxy_run(f"video/warmup-{clip.path.name}")
        parts.made.clear()
        parts.hls.clear()

    async def measure(r: int, side: str, _: None) -> float:
        seconds = await (proxy_run(f"video/r{r}-{clip.path.name}") if side == "proxy" else by_hand())
        log(f"video_hls {clip.path.name} round {r + 1}/{rounds}: {side} {seconds:.2f} s")
        return seconds

    return await alternating(rounds, None, None, measure)
