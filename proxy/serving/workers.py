"""Several processes serving one port: ``stream-proxy serve --workers N``.

The parent serves nothing. It starts N children, each a fresh interpreter running
``python -m proxy serve ... --worker-of PARENT``: the code path of ``--workers 1``
(process.py), with SO_REUSEPORT on its own listening socket, so that the kernel
spreads new connections over the children by a hash of their addresses. Each child
has its own event loop, its own memory budget and its own S3 connections; any child
may answer any request, since every upload's state is in the backend.

Why not gunicorn's aiohttp worker: it is a dependency, with an arbiter of its own
whose signals, timeouts and configuration would stand beside these, and it runs the
application through its own worker class, so the server around it (ProxyRunner's
connection limits and JSON errors, the drain) would need a second way in. Why not
one socket inherited by all: then every idle child is woken for each connection and
the kernel hands most of them to the one that waited last, so load gathers on one
process; SO_REUSEPORT queues each child's connections apart. The price is that a
child's queue goes with it: connections waiting in the backlog of a child killed
outright are reset (a drained child closes its listener only after the drain delay,
when nginx has stopped sending).

The parent restarts a child that ends while it is not stopping, after a pause that
doubles (up to a minute) while children die young; forwards SIGTERM and SIGINT to
the children; and exits 0 once all have drained (1 if one failed). A child that
cannot start (exit status 2, its one-line error on stderr) stops them all: a
restart would not mend it. A child whose parent is gone drains and exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
from pathlib import Path

from proxy.metrics import processes as metrics
from proxy.serving import StartError
from proxy.serving.process import listen_problem

log = logging.getLogger(__name__)

# The exit status of a process that could not start (cli.py).
START_ERROR = 2
# A child that ends sooner than this after its start died young: the pause before
# the next doubles, from MIN_PAUSE up to MAX_PAUSE, so a crash at start cannot spin.
YOUNG = 10.0
MIN_PAUSE = 0.5
MAX_PAUSE = 60.0


async def supervise(config_path: Path | None, host: str, port: int, workers: int) -> int:
    """Run ``workers`` children serving ``host``:``port`` until a signal has drained
    them all; the exit status. Raises StartError when they could not start."""
    if not hasattr(socket, "SO_REUSEPORT"):
        raise StartError(
            f"server.workers = {workers} needs SO_REUSEPORT, which this system lacks; set server.workers = 1"
        )
    if port == 0:
        raise StartError("server.workers > 1 needs a fixed server.port: with 0 each process picks its own")
    await _check_address(host, port)
    command = [sys.executable, "-m", "proxy", "serve"]
    command += ["--config", str(config_path)] if config_path is not None else []
    command += ["--host", host, "--port", str(port), "--worker-of", str(os.getpid())]
    with metrics.prepared(workers):
        return await _Supervisor(command).run(workers)


async def _check_address(host: str, port: int) -> None:
    """Bind (without listening, without SO_REUSEPORT) where the children will listen,
    so that a port in use or a host that does not resolve is said once, by the parent;
    and a port held by another server's SO_REUSEPORT group is refused, not joined."""
    loop = asyncio.get_running_loop()
    try:
        server = await loop.create_server(asyncio.Protocol, host, port, start_serving=False)
    except OSError as exc:
        raise StartError(listen_problem(exc, host, port)) from None
    server.close()
    await server.wait_closed()


class _Supervisor:
    def __init__(self, command: list[str]) -> None:
        self.command = command
        self.children: dict[int, asyncio.subprocess.Process] = {}  # by slot
        self.stopping: signal.Signals | None = None
        self.stopped = asyncio.Event()
        self.failed = False

    async def run(self, workers: int) -> int:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self.stop, signum)
        statuses = await asyncio.gather(*(self._keep(slot) for slot in range(workers)))
        if self.failed:
            return START_ERROR
        if any(statuses):
            log.error("workers ended with statuses %s", statuses)
            return 1
        log.info("all %d workers stopped", workers)
        return 0

    def stop(self, signum: signal.Signals) -> None:
        if self.stopping is None:
            log.info("%s received: stopping %d workers", signum.name, len(self.children))
        # A SIGINT after a SIGTERM goes on too: it cuts the children's drain short.
        if self.stopping is None or signum == signal.SIGINT:
            self.stopping = signum
            for child in self.children.values():
                _send(child, signum)
        self.stopped.set()

    async def _keep(self, slot: int) -> int:
        """Keep a child running in ``slot`` until stopped; its last exit status."""
        loop = asyncio.get_running_loop()
        pause = MIN_PAUSE
        while True:
            started = loop.time()
            try:
                child = await asyncio.create_subprocess_exec(*self.command, stdin=asyncio.subprocess.DEVNULL)
            except OSError as exc:  # out of processes or memory: tried again after a pause
                ended = f"could not be started ({exc.strerror or exc})"
            else:
                self.children[slot] = child
                log.info("worker %d started (pid %d)", slot, child.pid)
                if self.stopping is not None:  # signalled while it was being started
                    _send(child, self.stopping)
                status = await child.wait()
                del self.children[slot]
                metrics.process_ended(child.pid)
                if self.stopping is not None:
                    # Killed by the signal forwarded to it: it came before the child had
                    # its handlers, so before it listened: nothing was lost.
                    return 0 if status in (-signal.SIGTERM, -signal.SIGINT) else status
                if status == START_ERROR:
                    log.error("worker %d (pid %d) could not start: stopping", slot, child.pid)
                    self.failed = True
                    self.stop(signal.SIGTERM)
                    return status
                ended = f"(pid {child.pid}) ended unexpectedly ({_describe(status)})"
            pause = min(pause * 2, MAX_PAUSE) if loop.time() - started < YOUNG else MIN_PAUSE
            log.warning("worker %d %s: starting another in %g s", slot, ended, pause)
            try:
                await asyncio.wait_for(self.stopped.wait(), pause)
                return 0
            except TimeoutError:
                pass


def _send(child: asyncio.subprocess.Process, signum: signal.Signals) -> None:
    if child.returncode is None:
        with contextlib.suppress(ProcessLookupError):  # ended meanwhile: its wait() reports it
            child.send_signal(signum)


def _describe(status: int) -> str:
    if status < 0:
        try:
            return f"killed by {signal.Signals(-status).name}"
        except ValueError:
            return f"killed by signal {-status}"
    return f"exit status {status}"
