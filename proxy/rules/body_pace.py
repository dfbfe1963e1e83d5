"""How slowly a request body may arrive: the rule of ``server.body_min_rate`` (pure).

``server.body_timeout`` bounds each wait for body bytes, so a client that sends one
byte just inside it, over and over, would hold a connection, a temporary file and a
descriptor for as long as it liked. The pace rule closes that gap.

Time is counted in seconds the server spent *waiting for the client's bytes* (the
caller's clock; never the time it spent storing them, so storage backpressure is
never held against a client). That time is cut into windows of ``window`` seconds;
by the end of each, at least ``min_rate * window`` bytes must have arrived since it
began, else the body is too slow. A window is judged at its end only, and the next
one starts there, from the bytes received by then: bytes beyond a window's quota
are no credit for the next, so a burst followed by a trickle is still a trickle.

What follows, whatever the pattern of arrivals (tests/rules/test_body_pace.py):
- a body is cut off only when the ``window`` seconds before the cut brought fewer
  than ``min_rate * window`` bytes;
- any ``2 * window`` seconds bringing fewer than that end the body within them;
- a body arriving in chunks of ``c`` bytes at a steady ``min_rate + c / window``
  bytes per second or faster is never cut off.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Pace:
    """The minimum: ``min_rate`` bytes per second, over windows of ``window`` seconds
    of waiting. Either at 0 turns the rule off."""

    min_rate: float
    window: float

    @property
    def on(self) -> bool:
        return self.min_rate > 0 and self.window > 0


@dataclass(frozen=True)
class Window:
    """The window a body is in: since ``start`` seconds of waiting, when ``received``
    bytes of it had arrived."""

    start: float = 0.0
    received: int = 0


def window_end(pace: Pace, window: Window) -> float:
    """The seconds of waiting at which ``window`` is judged (infinite when off)."""
    return window.start + pace.window if pace.on else math.inf


def judge(pace: Pace, window: Window, waited: float, received: int) -> Window | None:
    """The window in force after ``waited`` seconds of waiting, ``received`` bytes
    having arrived in all: ``window`` itself before its end; past its end, the next
    one (from now) if it brought its quota, else None: the body is too slow.

    Judged late (a busy event loop), the next window starts when it was judged, and
    the bytes of the delay count for the window just ended: the doubt goes to the
    client."""
    if waited < window_end(pace, window):
        return window
    if received - window.received >= pace.min_rate * pace.window:
        return Window(waited, received)
    return None
