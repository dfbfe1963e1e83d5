"""Where the server's log goes and how it looks (``[log]``): text lines for a human
at a terminal, or one JSON object per line for a log collector; the access log
(proxy/web/access_log.py) writes its lines in the same format, already made.

``configure`` is called once at start, by the command line (and in each worker).
Without it (tests, an embedding program) logging is whatever the host set up, and
access lines are text.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

from proxy.config import LogConfig

ACCESS_LOGGER = "aiohttp.access"  # the logger aiohttp hands its access logger
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

_json_lines = False
_access_stream: TextIO | None = None


def json_lines() -> bool:
    """Whether log lines are JSON (configure said so)."""
    return _json_lines


def access_writer() -> Callable[[str], object] | None:
    """Where made access lines (with their newline) may be written straight, past
    logging's records, handlers and locks, which cost several times the making of
    the line; None when configure did not set up the access log's stream."""
    return None if _access_stream is None else _access_stream.write


def configure(config: LogConfig, stream: TextIO | None = None) -> None:
    """Send every log line to ``stream`` (stderr) in the configured format, at the
    configured level, access lines included unless ``log.access`` is off."""
    global _json_lines, _access_stream
    out = sys.stderr if stream is None else stream
    _access_stream = out
    _json_lines = config.format == "json" or (config.format == "auto" and not _is_terminal(out))
    level = logging.getLevelName(config.level.upper())
    handler = logging.StreamHandler(out)
    handler.setFormatter(JsonFormatter() if _json_lines else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Access lines come made (access_log.py): written as they are, not formatted again.
    access = logging.getLogger(ACCESS_LOGGER)
    access_handler = logging.StreamHandler(out)
    access_handler.setFormatter(logging.Formatter("%(message)s"))
    access.handlers[:] = [access_handler]
    access.propagate = False
    # Health probes' lines are debug (access_log.py): shown with log.level = debug.
    access.setLevel(min(level, logging.INFO) if config.access else logging.CRITICAL + 1)


def reset() -> None:
    """Access lines as text again, as before configure (tests that configured)."""
    global _json_lines, _access_stream
    _json_lines = False
    _access_stream = None


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # closed, or no file behind it
        return False


def utc_time(seconds: float) -> str:
    """ISO 8601 in UTC with milliseconds: ``2026-12-03T10:24:14.123Z``."""
    whole = int(seconds)
    return f"{time.strftime('%Y-%m-%dT%H:%M:%S', time.gmtime(whole))}.{int((seconds - whole) * 1000):03d}Z"


class JsonFormatter(logging.Formatter):
    """``{"time", "level", "logger", "message"}``, and ``"exception"`` with a traceback."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": utc_time(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exception"] = record.exc_text
        return json.dumps(line, ensure_ascii=False)
