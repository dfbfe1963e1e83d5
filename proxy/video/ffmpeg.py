"""Running ffmpeg and ffprobe: low priority, own process group, killed whole on any way out.

:func:`run_tool` starts the program under ``nice`` in a new session (its own process
group, so a kill reaches anything it started), reads stdout (kept, bounded, or fed
line by line to a callback) and keeps the tail of stderr for the failure reason.
``tick`` is awaited every ``tick_interval`` seconds while it runs (the maker uploads
finished segments there, and may pause the program with SIGSTOP while uploads catch
up). Whatever ends the wait — the program exiting, ``tick`` raising, cancellation, a
caller's timeout — the process group is SIGKILLed and
reaped before :func:`run_tool` returns or raises, so no ffmpeg outlives its job.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

log = logging.getLogger(__name__)

STDERR_LINES = 40
"""Lines of stderr kept for the failure reason (each cut to 1,000 bytes)."""
MAX_STDOUT = 8 << 20
"""ffprobe's JSON for even hundreds of streams is far smaller; more is not ffprobe's answer."""


# A process of its own session outlives a worker that is SIGKILLed, and a paused (SIGSTOPped)
# one would stay forever: util-linux's setpriv gives it PR_SET_PDEATHSIG, kept across the
# execs of nice and ffmpeg, so it dies with the process that started it.
_SETPRIV = shutil.which("setpriv")
_DIE_WITH_US = [_SETPRIV, "--pdeathsig", "KILL"] if _SETPRIV else []


class ToolError(Exception):
    """The program could not be started (not found, not executable)."""


class Group:
    """The running program's process group, for ``tick`` to pause and resume it."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.paused = False

    def pause(self) -> None:
        if not self.paused:
            _signal_group(self.pid, signal.SIGSTOP)
            self.paused = True

    def resume(self) -> None:
        if self.paused:
            _signal_group(self.pid, signal.SIGCONT)
            self.paused = False


@dataclass(frozen=True)
class Finished:
    returncode: int
    stdout: bytes  # empty when lines were given to on_line
    stderr: list[str]


async def run_tool(
    args: Sequence[str],
    *,
    nice: int = 0,
    pass_fds: Sequence[int] = (),
    on_line: Callable[[str], object] | None = None,
    tick: Callable[[Group], Awaitable[None]] | None = None,
    tick_interval: float = 0.5,
) -> Finished:
    """Run ``args`` (args[0] the program) to its end; see the module docstring."""
    # Looked up here, as nice would only say so on stderr with exit status 127.
    if shutil.which(args[0]) is None:
        raise ToolError(f"{os.path.basename(args[0])} not found")
    command = [*_DIE_WITH_US, *(["nice", "-n", str(nice)] if nice else []), *args]
    try:
        process = await asyncio.create_subprocess_exec(
            *command,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
            pass_fds=tuple(pass_fds),
        )
    except OSError as exc:
        raise ToolError(f"cannot run {os.path.basename(args[0])} ({exc.strerror})") from None
    stderr: deque[str] = deque(maxlen=STDERR_LINES)
    stdout = bytearray()
    assert process.stdout is not None and process.stderr is not None
    readers = [
        asyncio.create_task(_read_lines(process.stderr, lambda line: stderr.append(line[:1000]))),
        asyncio.create_task(
            _read_lines(process.stdout, on_line) if on_line else _read_all(process.stdout, stdout)
        ),
    ]
    group = Group(process.pid)
    try:
        waiting = asyncio.ensure_future(process.wait())
        try:
            while True:
                done, _ = await asyncio.wait({waiting}, timeout=tick_interval if tick else None)
                if done:
                    break
                if tick is not None:
                    await tick(group)
        finally:
            waiting.cancel()
        _signal_group(process.pid, signal.SIGKILL)  # anything it left running would hold the pipes open
        await asyncio.gather(*readers)
    finally:
        if process.returncode is None:
            _signal_group(process.pid, signal.SIGKILL)  # a stopped process dies of SIGKILL too
        for reader in readers:
            reader.cancel()
        # Reap it even when cancelled again meanwhile: SIGKILL makes this quick.
        await asyncio.shield(process.wait())
    assert process.returncode is not None
    return Finished(process.returncode, bytes(stdout), list(stderr))


def _signal_group(pid: int, sig: signal.Signals) -> None:
    # The group id is the pid (start_new_session). It is gone already when the program
    # ended and left nothing behind; that is the usual case.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


async def _read_lines(stream: asyncio.StreamReader, handle: Callable[[str], object]) -> None:
    while True:
        try:
            raw = await stream.readuntil(b"\n")
        except asyncio.IncompleteReadError as end:
            raw = end.partial
        except asyncio.LimitOverrunError as over:
            raw = await stream.readexactly(over.consumed)  # an overlong line: take it in pieces
        if not raw:
            return
        handle(raw.decode("utf-8", "replace").rstrip("\r\n"))


async def _read_all(stream: asyncio.StreamReader, into: bytearray) -> None:
    while chunk := await stream.read(1 << 16):
        if len(into) + len(chunk) > MAX_STDOUT:
            raise ToolError("too much output")
        into += chunk
