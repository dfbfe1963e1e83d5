"""Running out of file descriptors: telling it from other failures, and logging it
once per interval instead of once per request.

When every descriptor is taken, each request that needs one more (a file to read or
write, a connection to S3) fails, and asyncio's accept loop fails over and over (on
Python 3.11, once per waiting connection of the backlog, each logged with a traceback,
and again every second). That is one condition of the process, not news per
request: it is answered 503 (see errors.py) and logged at most once per
LOG_INTERVAL, with the count of failures since the last line, so a flood of clients
cannot flood the log too.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import resource
import time
from typing import Any

log = logging.getLogger(__name__)

LOG_INTERVAL = 10.0  # seconds between two log lines about the condition
RETRY_AFTER = 5  # seconds a client is asked to wait before trying again
_EXHAUSTED = {errno.EMFILE, errno.ENFILE}


def out_of_descriptors(exc: BaseException | None) -> bool:
    """Whether ``exc``, or an exception it was raised from or while handling, says
    the process (EMFILE) or the system (ENFILE) has no descriptor left. Libraries
    wrap it (aiohttp's ClientConnectorError, botocore's EndpointConnectionError, the
    storage's UpstreamError), so the whole chain is searched."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, OSError) and exc.errno in _EXHAUSTED:
            return True
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return False


class _Throttled:
    def __init__(self) -> None:
        self._last = -LOG_INTERVAL
        self._missed = 0

    def report(self, where: str) -> None:
        now = time.monotonic()
        if now - self._last < LOG_INTERVAL:
            self._missed += 1
            return
        more = f" ({self._missed} more failures since the last report)" if self._missed else ""
        log.warning(
            "out of file descriptors (limit %s) while %s: answering 503 until clients leave%s",
            descriptor_limit(),
            where,
            more,
        )
        self._last, self._missed = now, 0


_THROTTLED = _Throttled()


def report(where: str) -> None:
    """Note one failure for want of a descriptor (``where``: what was being done)."""
    _THROTTLED.report(where)


def descriptor_limit() -> int:
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def raise_descriptor_limit() -> int | None:
    """Raise the process's soft descriptor limit to its hard limit, as Go and the JVM
    do at start: the soft limit (often 1,024) is a guard for old select()-based
    programs, and this server (epoll, poll) needs one descriptor per connection, per
    open file and per S3 connection. Returns the limit now in force (None: none)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return None
    if soft == hard:
        return soft
    target = max(soft, 1024 * 1024) if hard == resource.RLIM_INFINITY else hard
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError):
        return soft  # some containers refuse it: the soft limit stays as it was
    return target


def loop_exception_handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """asyncio's handler for errors nobody awaits, with the accept loop's
    ``socket.accept() out of system resource`` (logged with a traceback every second
    while descriptors are short) reported like the others instead."""
    if out_of_descriptors(context.get("exception")):
        report("accepting connections")
        return
    if _accept_retry_after_close(context):
        log.debug("an accept retry found the listening socket closed (shutdown)")
        return
    loop.default_exception_handler(context)


def _accept_retry_after_close(context: dict[str, Any]) -> bool:
    """After an accept failed for want of descriptors, asyncio tries again a second
    later even if the server has closed its socket meanwhile (a shutdown while
    descriptors are short); that retry fails on descriptor -1, and is no error."""
    exc = context.get("exception")
    return isinstance(exc, ValueError) and "_start_serving" in str(context.get("message", ""))
