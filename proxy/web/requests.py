"""What every handler reads off a request: the object key, and the body as chunks
within the upload limit, the body timeout and the minimum body rate.

Every wait for body bytes is bounded by ``server.body_timeout``: a client that stops
sending mid-body would otherwise hold its connection, a temporary file or a part
buffer for as long as it likes. Only the waits are timed, never the time the server
spends storing what it got, so an upload held back by the storage (TCP backpressure)
is never blamed on its client. Over that same clock, ``server.body_min_rate`` asks for
a minimum rate (proxy/rules/body_pace.py): a client that sends a byte just inside the
timeout, over and over, is cut off too.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from aiohttp import EMPTY_PAYLOAD, StreamReader, web

from proxy.rules.body_pace import Window, judge, window_end
from proxy.rules.keys import validate_key
from proxy.streaming.bodies import limited
from proxy.web.errors import ApiError
from proxy.web.settings import BODY_PACE, BODY_TIMEOUT, MAX_UPLOAD


def object_key(request: web.Request) -> str:
    return validate_key(request.match_info["key"])


# The most a body chunk holds when taken from what aiohttp has buffered. aiohttp stops
# reading the connection past twice the server's read_bufsize (READ_BUFSIZE), so what
# one connection holds is bounded by that plus one socket read (RECV_SIZE); a chunk
# that has to be waited for is what arrived, within that bound too.
BODY_CHUNK = 64 * 1024


async def request_chunks(request: web.Request) -> AsyncIterator[bytes]:
    content = request.content
    while True:
        # Bytes already buffered are taken without a wait, so without body_wait's
        # timers: most chunks of a fast upload are. Neither read_nowait() nor
        # readany() raises aiohttp's buffer limits, as read(n) does past the low mark.
        chunk = content.read_nowait(BODY_CHUNK)
        if not chunk:
            async with body_wait(request):
                chunk = await content.readany()
            if not chunk:
                return
        yield chunk


@dataclass
class _BodyClock:
    """A request's seconds spent waiting for its body so far, and its pace window."""

    waited: float = 0.0
    window: Window = field(default_factory=Window)


_CLOCK = web.RequestKey("body_clock", _BodyClock)


@contextlib.asynccontextmanager
async def body_wait(request: web.Request) -> AsyncIterator[None]:
    """Around one wait for bytes of the request's body: past ``server.body_timeout``,
    or at the end of a window of waiting in which the body came slower than
    ``server.body_min_rate`` (proxy/rules/body_pace.py), it fails with a 408 that
    closes the connection (the rest of the body will not be read). The storage takes
    that like a client gone: nothing partial is published, and a tus PATCH keeps
    what it stored."""
    timeout = request.app[BODY_TIMEOUT]
    pace = request.app[BODY_PACE]
    clock = request.get(_CLOCK)
    if clock is None:
        clock = request[_CLOCK] = _BodyClock()
    loop = asyncio.get_running_loop()
    began = loop.time()
    deadline = asyncio.timeout(timeout)
    too_slow = False
    judging: asyncio.TimerHandle | None = None

    def judge_at_window_end() -> None:
        nonlocal judging
        end = window_end(pace, clock.window)
        if end != math.inf:
            # The clock runs only while the body is waited for: during this wait.
            judging = loop.call_at(began + end - clock.waited, judge_pace)

    def judge_pace() -> None:
        nonlocal too_slow
        waited = clock.waited + loop.time() - began
        window = judge(pace, clock.window, waited, _arrived(request.content))
        if window is None:
            too_slow = True
            deadline.reschedule(loop.time())
        else:
            clock.window = window
            judge_at_window_end()

    try:
        async with deadline:
            judge_at_window_end()
            try:
                yield
            finally:
                if judging is not None:
                    judging.cancel()
    except TimeoutError:
        if not deadline.expired():
            raise  # not ours: something inside timed out on its own
    else:
        # Judged too slow in the loop turn its bytes came in, the wait may end before
        # the cut lands: the verdict stands all the same.
        if not too_slow:
            return
    finally:
        clock.waited += loop.time() - began
    # No more of this body will be read. aiohttp is told to read no more off the
    # connection and that the body has ended, so that it closes the connection after
    # the 408 instead of lingering 10 s for the rest of the body.
    request.protocol.close()
    request.content.feed_eof()
    message = (
        f"the request body came slower than {pace.min_rate:.15g} bytes per second"
        f" over {pace.window:g} seconds"
        if too_slow
        else f"no byte of the request body arrived for {timeout:g} seconds"
    )
    raise ApiError(408, "body_timeout", message, close=True)


def _arrived(content: StreamReader) -> int:
    """Body bytes received so far, counted as they came off the connection (before
    a Content-Encoding is undone: a compressed trickle is paced by what it sends,
    not by what it inflates to). A request without a body has none and never waits."""
    return 0 if content is EMPTY_PAYLOAD else content.total_raw_bytes


def within_upload_limit(request: web.Request, body: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """``body``, failing with BodyTooLarge past ``server.max_upload_bytes`` (0: none)."""
    limit = request.app[MAX_UPLOAD]
    return limited(body, limit) if limit else body
