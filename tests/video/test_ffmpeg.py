"""The process runner (proxy/video/ffmpeg.py) with real processes: groups killed, paused, reaped."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import uuid
from pathlib import Path

import pytest

from proxy.video.ffmpeg import STDERR_LINES, Group, ToolError, run_tool
from tests.video.support import processes_mentioning

# A parent that starts a child (both mention MARK in their command lines) and prints ticks.
SCRIPT = """
import subprocess, sys, time
subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", sys.argv[1]])
for i in range(10**6):
    print(i, flush=True)
    print("line", i, file=sys.stderr, flush=True)
    time.sleep(0.02)
"""


async def gone(mark: str) -> bool:
    """Whether every process mentioning ``mark`` is gone within 5 s (orphans are reaped by init)."""
    for _ in range(100):
        if not processes_mentioning(mark):
            return True
        await asyncio.sleep(0.05)
    return False


def state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


async def test_cancel_kills_the_whole_group(tmp_path: Path) -> None:
    mark = f"mark-{uuid.uuid4()}"
    lines: list[str] = []
    task = asyncio.create_task(run_tool([sys.executable, "-c", SCRIPT, mark], nice=5, on_line=lines.append))
    for _ in range(200):
        await asyncio.sleep(0.05)
        if len(processes_mentioning(mark)) == 2 and lines:
            break
    pids = processes_mentioning(mark)
    assert len(pids) == 2
    assert all(os.getpriority(os.PRIO_PROCESS, pid) == 5 for pid in pids)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await gone(mark)


async def test_tick_can_pause_and_resume(tmp_path: Path) -> None:
    mark = f"mark-{uuid.uuid4()}"
    lines: list[str] = []
    seen: list[str] = []

    async def tick(group: Group) -> None:
        ticks = len(seen) // 2
        if ticks == 0:
            group.pause()
        elif ticks == 3:
            group.resume()
        elif ticks == 5:
            raise RuntimeError("enough")
        seen.extend([state(group.pid), str(len(lines))])

    with pytest.raises(RuntimeError):
        await run_tool(
            [sys.executable, "-c", SCRIPT, mark], on_line=lines.append, tick=tick, tick_interval=0.3
        )
    states, counts = seen[0::2], [int(n) for n in seen[1::2]]
    # (SIGSTOP takes effect soon after, not during, the kill() call: tick 0 is not checked.)
    assert states[1:3] == ["T", "T"] and counts[1] == counts[2]  # stopped: printed nothing
    assert states[4] != "T" and counts[4] > counts[2]  # went on once resumed
    assert await gone(mark)


async def test_exit_status_and_stderr_tail() -> None:
    script = "import sys\nfor i in range(1000): print('err', i, file=sys.stderr)\nsys.exit(3)"
    finished = await run_tool([sys.executable, "-c", script])
    assert finished.returncode == 3
    assert len(finished.stderr) == STDERR_LINES and finished.stderr[-1] == "err 999"


async def test_missing_program() -> None:
    with pytest.raises(ToolError, match="no-such-program not found"):
        await run_tool(["/nonexistent/no-such-program"])


async def test_dies_with_the_worker(tmp_path: Path) -> None:
    """A worker SIGKILLed mid-job takes its ffmpeg with it (even a paused one)."""
    mark = f"mark-{uuid.uuid4()}"
    worker_code = (
        "import asyncio, sys\n"
        "from proxy.video.ffmpeg import run_tool\n"
        "asyncio.run(run_tool([sys.executable, '-c', 'import time; time.sleep(60)', sys.argv[1]], nice=3))"
    )
    worker = await asyncio.create_subprocess_exec(
        sys.executable, "-c", worker_code, mark, cwd=Path(__file__).parents[2]
    )
    try:
        for _ in range(200):
            if processes_mentioning(mark) != [worker.pid]:
                break
            await asyncio.sleep(0.05)
        tools = [pid for pid in processes_mentioning(mark) if pid != worker.pid]
        assert len(tools) == 1
        os.kill(tools[0], signal.SIGSTOP)
    finally:
        worker.kill()
        await worker.wait()
    assert await gone(mark)
