"""HTTP range requests (RFC 9110 §14): parse ``Range`` and frame ``multipart/byteranges``.

Pure functions, no I/O. The handler asks :func:`parse_range` what to send:

- :class:`WholeBody`: 200 with the whole representation (no Range, or one we ignore);
- :class:`Unsatisfiable`: 416 with ``Content-Range: bytes */size``;
- :class:`PartialBody`: 206, a single part for one range, ``multipart/byteranges``
  (framed by :func:`multipart_byteranges`) for several.

Preconditions (``If-Match``, ``If-Range``, ...) are evaluated before this, see
:mod:`proxy.rules.conditions`.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeAlias

MAX_HEADER_LENGTH = 4096
"""Longer Range headers are ignored: no browser sends them, and it bounds the parsing work."""

DEFAULT_MAX_RANGES = 16

# first-pos "-" [ last-pos ]  /  "-" suffix-length   (RFC 9110 §14.1.1). ASCII digits only:
# \d would also accept other Unicode digits, which int() happily converts.
_RANGE_SPEC = re.compile(r"(?P<first>[0-9]+)-(?P<last>[0-9]*)|-(?P<suffix>[0-9]+)")
_OWS = " \t"
# RFC 2046 allows a few more characters (space, "/", ":", ...) but those would force the
# boundary to be quoted in the Content-Type parameter; token characters never need that.
_BOUNDARY = re.compile(r"[0-9A-Za-z'+_.-]{1,70}")


@dataclass(frozen=True)
class ByteRange:
    """Bytes ``start`` to ``end`` of a representation, both inclusive as in ``Content-Range``."""

    start: int
    end: int

    def __post_init__(self) -> None:
        if not 0 <= self.start <= self.end:
            raise ValueError(f"invalid byte range {self.start}-{self.end}")

    @property
    def length(self) -> int:
        return self.end - self.start + 1

    def content_range(self, size: int) -> str:
        """The ``Content-Range`` field value for this range of a ``size``-byte body (RFC 9110 §14.4)."""
        return f"bytes {self.start}-{self.end}/{size}"


@dataclass(frozen=True)
class WholeBody:
    """Send 200 with the whole representation: there was no Range header, or it is ignored."""


@dataclass(frozen=True)
class Unsatisfiable:
    """Send 416: no requested range overlaps the representation (RFC 9110 §15.5.17)."""

    @staticmethod
    def content_range(size: int) -> str:
        """The ``Content-Range`` a 416 response should carry (RFC 9110 §14.4)."""
        return f"bytes */{size}"


@dataclass(frozen=True)
class PartialBody:
    """Send 206 with these ranges, in this order (RFC 9110 §15.3.7)."""

    ranges: tuple[ByteRange, ...]

    def __post_init__(self) -> None:
        if not self.ranges:
            raise ValueError("a partial body needs at least one range")


RangeResult: TypeAlias = WholeBody | Unsatisfiable | PartialBody

# A parsed range-spec before it meets the representation's size:
# (first, last) for "first-last" / "first-" (last None), (None, n) for the suffix "-n".
_Spec: TypeAlias = tuple[int | None, int | None]


def parse_range(header: str | None, size: int, *, max_ranges: int = DEFAULT_MAX_RANGES) -> RangeResult:
    """Decide how to answer a GET with this ``Range`` header for a ``size``-byte representation.

    Syntax (RFC 9110 §14.1.1): ``bytes=`` (unit case-insensitive) then a comma-separated
    list of ``first-last``, ``first-`` or ``-suffix`` with ASCII digits only. Optional
    whitespace (space, tab) is allowed around each list element, empty elements are
    skipped (§5.6.1), and no whitespace is allowed anywhere else (``bytes = 0-1``,
    ``bytes=0 - 1`` are invalid). A header that is invalid in any way, uses another
    unit, or is longer than :data:`MAX_HEADER_LENGTH` is ignored: :class:`WholeBody`,
    as RFC 9110 §14.2 allows ("A server MAY ignore the Range header field").

    Satisfiability (§14.1.2): ``first-last`` is satisfiable when first < size, and its
    end is clipped to size - 1; ``-n`` selects the last n bytes, or all of them when n
    >= size, and ``-0`` selects nothing. An empty representation satisfies no range, so
    any valid Range on it gives :class:`Unsatisfiable` (416: there is no first byte, and
    ``Content-Range`` cannot describe zero bytes; nginx answers 200 to ranges starting
    at 0 there, the RFC allows either). The satisfiable ranges are
    returned in the order asked, neither sorted nor merged; unsatisfiable ones are
    dropped. If none is left: :class:`Unsatisfiable`.

    Abuse (§14.2, §17.15 allow ignoring such headers): the header is ignored, giving
    :class:`WholeBody`, when

    - it has more than ``max_ranges`` range-specs (satisfiable or not), or
    - the lengths of the satisfiable ranges add up to more than ``size``.

    The second rule is nginx's. Ranges that do not overlap can never add up to more than
    the object, so it only rejects overlapping ranges, once the overlap is worth more
    than the gaps. Together the two rules bound a 206 response body by ``size`` plus
    ``max_ranges`` part headers: never more than a 200 would cost, give or take framing.
    """
    if size < 0:
        raise ValueError(f"size must not be negative: {size}")
    if header is None:
        return WholeBody()
    specs = _parse_specs(header)
    if specs is None or len(specs) > max_ranges:
        return WholeBody()
    ranges = [byte_range for spec in specs if (byte_range := _resolve(spec, size)) is not None]
    if not ranges:
        return Unsatisfiable()
    if sum(byte_range.length for byte_range in ranges) > size:
        return WholeBody()
    return PartialBody(tuple(ranges))


def _parse_specs(header: str) -> list[_Spec] | None:
    """The range-specs of a syntactically valid ``bytes`` ranges-specifier, else None."""
    # The length check comes first: it also keeps int() below within its digit limit.
    if len(header) > MAX_HEADER_LENGTH:
        return None
    unit, equals, range_set = header.strip(_OWS).partition("=")
    # isascii(): str.lower() maps a few non-ASCII letters onto ASCII ones.
    if not equals or not unit.isascii() or unit.lower() != "bytes":
        return None
    specs: list[_Spec] = []
    for element in range_set.split(","):
        element = element.strip(_OWS)
        if not element:
            continue
        match = _RANGE_SPEC.fullmatch(element)
        if match is None:
            return None
        first, last, suffix = match.group("first", "last", "suffix")
        if suffix is not None:
            specs.append((None, int(suffix)))
            continue
        last_pos = int(last) if last else None
        if last_pos is not None and last_pos < int(first):
            return None  # §14.1.1: such an int-range is invalid, not merely unsatisfiable
        specs.append((int(first), last_pos))
    return specs or None


def _resolve(spec: _Spec, size: int) -> ByteRange | None:
    """The bytes ``spec`` selects from a ``size``-byte representation, or None if none."""
    first, last = spec
    if first is None:
        assert last is not None
        if last == 0 or size == 0:
            return None
        return ByteRange(max(size - last, 0), size - 1)
    if first >= size:
        return None
    end = size - 1 if last is None else min(last, size - 1)
    return ByteRange(first, end)


def make_boundary() -> str:
    """A fresh multipart boundary: random, so it cannot occur in the object by accident."""
    return secrets.token_hex(16)


def multipart_byteranges(
    ranges: Sequence[ByteRange], size: int, content_type: str, boundary: str
) -> tuple[list[tuple[bytes, ByteRange]], bytes, int]:
    """Framing for a ``multipart/byteranges`` body (RFC 9110 §14.6, RFC 2046 §5.1.1).

    Returns ``(parts, closing, content_length)``. The body is, for each ``(header,
    byte_range)`` in ``parts``, ``header`` followed by the bytes of ``byte_range``; then
    ``closing``. ``content_length`` is the exact length of all of it, so the response can
    carry ``Content-Length`` instead of being chunked. The response's own Content-Type
    is ``multipart/byteranges; boundary=<boundary>``.

    Every part header starts with CRLF, the first one included, as nginx writes it:
    RFC 2046 makes that CRLF part of the delimiter, and before the first one it ends an
    empty preamble. So each header is::

        CRLF "--" boundary CRLF
        "Content-Type: " content_type CRLF
        "Content-Range: bytes first-last/size" CRLF
        CRLF

    and ``closing`` is ``CRLF "--" boundary "--" CRLF``.

    ``boundary`` must be 1 to 70 token characters (``make_boundary()`` is), and
    ``content_type`` printable ASCII, else ValueError: both end up verbatim in headers.
    """
    if not ranges:
        raise ValueError("multipart/byteranges needs at least one range")
    if _BOUNDARY.fullmatch(boundary) is None:
        raise ValueError(f"invalid multipart boundary: {boundary!r}")
    if not content_type or not all(" " <= ch <= "~" for ch in content_type):
        raise ValueError(f"invalid content type: {content_type!r}")
    parts: list[tuple[bytes, ByteRange]] = []
    total = 0
    for byte_range in ranges:
        if byte_range.end >= size:
            raise ValueError(f"range {byte_range.start}-{byte_range.end} is outside a {size}-byte body")
        header = (
            f"\r\n--{boundary}\r\n"
            f"Content-Type: {content_type}\r\n"
            f"Content-Range: {byte_range.content_range(size)}\r\n"
            "\r\n"
        ).encode("ascii")
        parts.append((header, byte_range))
        total += len(header) + byte_range.length
    closing = f"\r\n--{boundary}--\r\n".encode("ascii")
    return parts, closing, total + len(closing)
