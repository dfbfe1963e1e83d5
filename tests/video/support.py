"""Helpers of the video tests: a sink into a directory, ffprobe/ffmpeg checks, an HTTP source."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from proxy.video.playlists import MediaPlaylist, parse_media_playlist


class DirSink:
    """Stores what make() puts under ``root`` and records the order and content types."""

    def __init__(self, root: Path, alive_in: str | None = None) -> None:
        self.root = root
        self.alive_in = alive_in  # record whether a process mentioning this runs at each put
        self.put_while_running: list[bool] = []
        self.order: list[str] = []
        self.types: dict[str, str] = {}

    async def put(self, name: str, path: Path, content_type: str) -> None:
        assert await asyncio.to_thread(os.path.getsize, path) > 0, name
        assert name not in self.types, f"{name} put twice"
        self.order.append(name)
        self.types[name] = content_type
        target = self.root / name
        if self.alive_in is not None:
            self.put_while_running.append(bool(processes_mentioning(self.alive_in)))
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)


def ffprobe(path: Path | str, *extra: str) -> dict[str, Any]:
    done = subprocess.run(
        [
            "ffprobe",
            "-v",
            "error",
            "-print_format",
            "json",
            "-show_format",
            "-show_streams",
            *extra,
            str(path),
        ],
        capture_output=True,
        check=True,
        timeout=60,
    )
    answer: dict[str, Any] = json.loads(done.stdout)
    return answer


def stream(probed: dict[str, Any], kind: str) -> dict[str, Any]:
    return next(s for s in probed["streams"] if s["codec_type"] == kind)


def mean_luma(image: Path) -> float:
    """Average Y of a picture (0 black .. 255 white), by ffmpeg's signalstats."""
    done = subprocess.run(
        ["ffmpeg", "-v", "info", "-nostdin", "-i", str(image), "-vf",
         "signalstats,metadata=print:key=lavfi.signalstats.YAVG", "-f", "null", "-"],
        capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    return float(re.findall(r"YAVG=([0-9.]+)", done.stderr)[-1])


def video_packets(url: Path | str) -> list[str]:
    """MD5s of the first video stream's packets, copied (not decoded): equal lists mean equal bitstreams."""
    done = subprocess.run(
        ["ffmpeg", "-v", "error", "-nostdin", "-i", str(url), "-map", "0:v:0", "-c", "copy",
         "-f", "framemd5", "-"],
        capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    return [
        line.rsplit(",", 1)[1].strip()
        for line in done.stdout.splitlines()
        if line and not line.startswith("#")
    ]


def playlist(path: Path) -> MediaPlaylist:
    return parse_media_playlist(path.read_text())


def master_variants(path: Path) -> list[tuple[dict[str, str], str]]:
    """(attributes, uri) of each EXT-X-STREAM-INF in a master playlist."""
    lines = path.read_text().splitlines()
    out = []
    for i, line in enumerate(lines):
        if line.startswith("#EXT-X-STREAM-INF:"):
            attrs = dict(re.findall(r'([A-Z-]+)=("[^"]*"|[^,]*)', line.split(":", 1)[1]))
            out.append(({k: v.strip('"') for k, v in attrs.items()}, lines[i + 1]))
    return out


def processes_mentioning(text: str) -> list[int]:
    """Pids of live processes whose command line contains ``text`` (a job's unique temp dir)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read().decode(errors="replace")
            with open(f"/proc/{entry}/stat") as f:
                zombie = f.read().rsplit(")", 1)[1].split()[0] == "Z"
        except OSError:
            continue
        if text in cmdline and not zombie:
            found.append(int(entry))
    return found


@dataclass
class Served:
    """A file served by HTTP with Range, answering 412 unless If-Match is the file's ETag.

    ``pace``: seconds to wait after each 16 KiB sent, so ffmpeg runs long enough to be seen
    running (a real S3 is slower than 127.0.0.1 too)."""

    path: Path
    etag: str = '"clip-1"'
    pace: float = 0.0
    requests: list[dict[str, str]] = field(default_factory=list)


SERVED = web.AppKey("served", Served)


async def _serve(request: web.Request) -> web.StreamResponse:
    served = request.app[SERVED]
    served.requests.append(dict(request.headers))
    if request.path != "/clip":
        return web.Response(status=403)
    if request.headers.get("If-Match") != served.etag:
        return web.Response(status=412)
    data = served.path.read_bytes()
    m = re.fullmatch(r"bytes=([0-9]+)-([0-9]*)", request.headers.get("Range", ""))
    if m is None:
        return web.Response(body=data, headers={"ETag": served.etag, "Accept-Ranges": "bytes"})
    start = int(m.group(1))
    end = min(int(m.group(2)) if m.group(2) else len(data) - 1, len(data) - 1)
    if start >= len(data):
        return web.Response(status=416, headers={"Content-Range": f"bytes */{len(data)}"})
    headers = {
        "ETag": served.etag,
        "Accept-Ranges": "bytes",
        "Content-Range": f"bytes {start}-{end}/{len(data)}",
    }
    if not served.pace:
        return web.Response(status=206, body=data[start : end + 1], headers=headers)
    response = web.StreamResponse(status=206, headers=headers)
    response.content_length = end + 1 - start
    await response.prepare(request)
    try:
        for at in range(start, end + 1, 16384):
            await response.write(data[at : min(at + 16384, end + 1)])
            await asyncio.sleep(served.pace)
    except ConnectionError:
        pass  # ffmpeg seeked elsewhere and closed this one
    return response


@asynccontextmanager
async def http_source(path: Path, pace: float = 0.0) -> AsyncIterator[tuple[str, Served]]:
    """``(base URL, Served)``; the file is at ``base + "/clip"``, anything else is 403."""
    served = Served(path, pace=pace)
    app = web.Application()
    app[SERVED] = served
    app.router.add_get("/{tail:.*}", _serve)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}", served
    finally:
        await runner.cleanup()
