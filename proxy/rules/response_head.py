"""The head of an HTTP/1.1 response as read off a raw connection (pure).

Only what a relay of a fixed-length body needs: the status, the headers and whether
the connection may be reused. Anything this module does not understand is refused,
so that the caller can fall back to a full HTTP client rather than guess.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

HEAD_END = b"\r\n\r\n"
# Far more than S3 sends; a longer head is not worth relaying by hand.
MAX_HEAD_BYTES = 16 * 1024

_STATUS_LINE = re.compile(rb"HTTP/1\.([01]) ([0-9]{3})(?: [^\r\n]*)?")
_TOKEN = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


class MalformedHead(ValueError):
    """The bytes are not a response head this module accepts."""


@dataclass(frozen=True)
class ResponseHead:
    status: int
    headers: dict[str, str]  # lower-case names; repeated fields joined with ", "
    keep_alive: bool

    def body_length(self) -> int | None:
        """The body's length when Content-Length alone frames it, else None."""
        if "transfer-encoding" in self.headers:
            return None
        text = self.headers.get("content-length")
        if text is None or not text.isascii() or not text.isdigit():
            return None
        return int(text)


def split_head(buffer: bytes) -> tuple[bytes, bytes] | None:
    """(head, what follows it) once ``buffer`` holds the whole head, else None.
    MalformedHead when no head can end within MAX_HEAD_BYTES."""
    end = buffer.find(HEAD_END)
    if end < 0:
        if len(buffer) > MAX_HEAD_BYTES:
            raise MalformedHead("response head too long")
        return None
    cut = end + len(HEAD_END)
    return buffer[:cut], buffer[cut:]


def parse_head(head: bytes) -> ResponseHead:
    """Parse a head ending in CRLF CRLF (as split_head returns it)."""
    lines = head[: -len(HEAD_END)].split(b"\r\n")
    status = _STATUS_LINE.fullmatch(lines[0])
    if status is None:
        raise MalformedHead(f"bad status line {lines[0][:80]!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        # Obsolete line folding and bare names are not worth supporting here.
        if not colon or _TOKEN.fullmatch(name) is None:
            raise MalformedHead(f"bad header line {line[:80]!r}")
        key = name.decode("ascii").lower()
        text = value.strip(b" \t").decode("latin-1")
        headers[key] = f"{headers[key]}, {text}" if key in headers else text
    connection = {token.strip().lower() for token in headers.get("connection", "").split(",")}
    http_10 = status.group(1) == b"0"
    keep_alive = "keep-alive" in connection if http_10 else "close" not in connection
    return ResponseHead(int(status.group(2)), headers, keep_alive)
