"""Range requests (proxy/rules/ranges.py): RFC 9110 §14 parsing, satisfiability and multipart framing."""

from __future__ import annotations

import email
import email.policy
import re

import pytest
from hypothesis import event, given
from hypothesis import strategies as st

from proxy.rules.ranges import (
    DEFAULT_MAX_RANGES,
    MAX_HEADER_LENGTH,
    ByteRange,
    PartialBody,
    RangeResult,
    Unsatisfiable,
    WholeBody,
    make_boundary,
    multipart_byteranges,
    parse_range,
)

SIZE = 100
WHOLE = WholeBody()
UNSATISFIABLE = Unsatisfiable()


def partial(*pairs: tuple[int, int]) -> PartialBody:
    return PartialBody(tuple(ByteRange(start, end) for start, end in pairs))


# --- ByteRange and the result types -------------------------------------------------------------


def test_byte_range_length_and_content_range() -> None:
    assert ByteRange(0, 0).length == 1
    assert ByteRange(10, 19).length == 10
    assert ByteRange(0, 99).content_range(100) == "bytes 0-99/100"
    assert Unsatisfiable.content_range(100) == "bytes */100"
    assert UNSATISFIABLE.content_range(0) == "bytes */0"


@pytest.mark.parametrize(("start", "end"), [(-1, 0), (5, 4), (-3, -1)])
def test_byte_range_refuses_impossible_bounds(start: int, end: int) -> None:
    with pytest.raises(ValueError):
        ByteRange(start, end)


def test_partial_body_needs_a_range() -> None:
    with pytest.raises(ValueError):
        PartialBody(())


def test_negative_size_is_a_caller_bug() -> None:
    with pytest.raises(ValueError):
        parse_range("bytes=0-", -1)


# --- single ranges ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, WHOLE),
        ("bytes=0-1", partial((0, 1))),  # Safari's first probe of a <video>
        ("bytes=0-", partial((0, 99))),  # Chromium's first request of a <video>
        ("bytes=0-0", partial((0, 0))),
        ("bytes=0-99", partial((0, 99))),
        ("bytes=0-100", partial((0, 99))),
        ("bytes=0-99999999999999999999999999", partial((0, 99))),
        ("bytes=50-59", partial((50, 59))),
        ("bytes=98-1000", partial((98, 99))),
        ("bytes=99-", partial((99, 99))),
        ("bytes=99-99", partial((99, 99))),
        ("bytes=99-100", partial((99, 99))),
        ("bytes=007-010", partial((7, 10))),
        ("bytes=100-", UNSATISFIABLE),
        ("bytes=100-100", UNSATISFIABLE),
        ("bytes=100-200", UNSATISFIABLE),
        ("bytes=99999999999999999999999999-", UNSATISFIABLE),
        ("bytes=-1", partial((99, 99))),
        ("bytes=-10", partial((90, 99))),
        ("bytes=-99", partial((1, 99))),
        ("bytes=-100", partial((0, 99))),
        ("bytes=-101", partial((0, 99))),
        ("bytes=-99999999999999999999999999", partial((0, 99))),
        ("bytes=-0", UNSATISFIABLE),
        ("bytes=-000", UNSATISFIABLE),
        ("BYTES=0-1", partial((0, 1))),
        ("Bytes=0-1", partial((0, 1))),
    ],
)
def test_single_range(header: str | None, expected: RangeResult) -> None:
    assert parse_range(header, SIZE) == expected


@pytest.mark.parametrize(
    ("header", "size", "expected"),
    [
        # An empty object has no byte to send: every valid Range is unsatisfiable.
        (None, 0, WHOLE),
        ("bytes=0-", 0, UNSATISFIABLE),
        ("bytes=0-0", 0, UNSATISFIABLE),
        ("bytes=0-1", 0, UNSATISFIABLE),
        ("bytes=-1", 0, UNSATISFIABLE),
        ("bytes=-0", 0, UNSATISFIABLE),
        ("bytes=5-", 0, UNSATISFIABLE),
        ("bytes=0-,-5", 0, UNSATISFIABLE),
        ("bytes=x", 0, WHOLE),
        # One byte: offset 0 is both the first and the last.
        ("bytes=0-", 1, partial((0, 0))),
        ("bytes=0-0", 1, partial((0, 0))),
        ("bytes=0-1", 1, partial((0, 0))),
        ("bytes=-1", 1, partial((0, 0))),
        ("bytes=-5", 1, partial((0, 0))),
        ("bytes=1-", 1, UNSATISFIABLE),
        ("bytes=-0", 1, UNSATISFIABLE),
        ("bytes=0-0,0-0", 1, WHOLE),  # two bytes asked of a one-byte object
    ],
)
def test_empty_and_one_byte_objects(header: str | None, size: int, expected: RangeResult) -> None:
    assert parse_range(header, size) == expected


# --- syntax -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "header",
    [
        "",
        "bytes",
        "bytes=",
        "bytes=,",
        "bytes= , ,\t",
        "bytes=-",
        "bytes=--5",
        "bytes=-5-",
        "bytes=0--1",
        "bytes=1-2-3",
        "bytes=a-b",
        "bytes=0-b",
        "bytes=a-1",
        "bytes=5-1",
        "bytes=0-1,5-1",  # one invalid range-spec spoils the whole header
        "bytes=0-1,x",
        "bytes=0-1,-",
        "bytes=+1-2",
        "bytes=1-+2",
        "bytes=-+1",
        "bytes=0x1-2",
        "bytes=1.5-2",
        "bytes=1e3-",
        "bytes=\u0661-\u0662",  # Arabic-Indic digits
        "bytes=\u00b2-\u00b3",  # superscript digits
        "bytes=\uff10-\uff11",  # full-width digits
        "items=0-1",
        "none=0-1",
        "bytesx=0-1",
        "byte=0-1",
        "=0-1",
        "0-1",
        "bytes 0-1",
        "bytes:0-1",
        "bytes==0-1",
        "bytes=0-1;x",
        "bytes=0-1;q=1",
        "bytes = 0-1",
        "bytes =0-1",
        "bytes=0 -1",
        "bytes=0- 1",
        "bytes=0 - 1",
        "bytes=- 1",
        "bytes=0-1 2-3",
        "bytes=0-1\n",
        "bytes=0-1\r\n",
        "bytes=\n0-1",
        "bytes=0-1\x00",
        "b\u0130tes=0-1",
        "byte\u017f=0-1",  # long s: casefold() would make it "bytes"
    ],
)
def test_invalid_headers_are_ignored(header: str) -> None:
    assert parse_range(header, SIZE) == WHOLE


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (" bytes=0-1 ", partial((0, 1))),
        ("\tbytes=0-1\t", partial((0, 1))),
        ("bytes= 0-1", partial((0, 1))),
        ("bytes=0-1 ,2-3", partial((0, 1), (2, 3))),
        ("bytes=0-1, 2-3", partial((0, 1), (2, 3))),
        ("bytes=0-1 , 2-3", partial((0, 1), (2, 3))),
        ("bytes=0-1\t,\t2-3", partial((0, 1), (2, 3))),
        ("bytes=0-1,,2-3", partial((0, 1), (2, 3))),
        ("bytes=0-1, ,2-3", partial((0, 1), (2, 3))),
        ("bytes=,0-1", partial((0, 1))),
        ("bytes=0-1,", partial((0, 1))),
        ("bytes=,,0-1,,", partial((0, 1))),
    ],
)
def test_whitespace_and_empty_elements_around_commas(header: str, expected: RangeResult) -> None:
    assert parse_range(header, SIZE) == expected


# --- several ranges -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("bytes=0-1,5-6", partial((0, 1), (5, 6))),
        ("bytes=50-59,0-9", partial((50, 59), (0, 9))),  # kept in the order asked
        ("bytes=-5,0-4", partial((95, 99), (0, 4))),
        ("bytes=0-4,5-9", partial((0, 4), (5, 9))),  # adjacent: not merged
        ("bytes=0-10,5-15", partial((0, 10), (5, 15))),  # overlapping: not merged
        ("bytes=0-1,0-1", partial((0, 1), (0, 1))),
        ("bytes=0-1,200-300", partial((0, 1))),  # the unsatisfiable one is dropped
        ("bytes=200-300,90-", partial((90, 99))),
        ("bytes=-0,10-19", partial((10, 19))),
        ("bytes=0-99,100-200", partial((0, 99))),  # the dropped range does not count
        ("bytes=200-,300-400,-0", UNSATISFIABLE),
    ],
)
def test_multiple_ranges(header: str, expected: RangeResult) -> None:
    assert parse_range(header, SIZE) == expected


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("bytes=0-49,50-99", partial((0, 49), (50, 99))),  # exactly the object
        ("bytes=0-50,50-99", WHOLE),  # one byte more than the object
        ("bytes=0-,0-", WHOLE),
        ("bytes=0-60,40-99", WHOLE),
        ("bytes=-100,0-0", WHOLE),
        ("bytes=0-59,10-29,30-49", partial((0, 59), (10, 29), (30, 49))),  # 100 bytes in all
        ("bytes=0-59,10-29,30-50", WHOLE),
    ],
)
def test_ranges_adding_up_to_more_than_the_object_are_ignored(header: str, expected: RangeResult) -> None:
    assert parse_range(header, SIZE) == expected


def one_byte_ranges(count: int) -> str:
    return "bytes=" + ",".join(f"{i}-{i}" for i in range(count))


def test_max_ranges() -> None:
    assert parse_range(one_byte_ranges(DEFAULT_MAX_RANGES), SIZE) == partial(
        *((i, i) for i in range(DEFAULT_MAX_RANGES))
    )
    assert parse_range(one_byte_ranges(DEFAULT_MAX_RANGES + 1), SIZE) == WHOLE
    # Every range-spec counts, satisfiable or not; empty list elements do not.
    assert parse_range(one_byte_ranges(DEFAULT_MAX_RANGES) + ",500-600", SIZE) == WHOLE
    assert parse_range(one_byte_ranges(DEFAULT_MAX_RANGES) + ",,,", SIZE) != WHOLE
    assert parse_range("bytes=0-1,2-3", SIZE, max_ranges=1) == WHOLE
    assert parse_range("bytes=0-1", SIZE, max_ranges=1) == partial((0, 1))


def test_long_headers_are_ignored() -> None:
    at_limit = "bytes=0-1" + "," * (MAX_HEADER_LENGTH - len("bytes=0-1"))
    assert len(at_limit) == MAX_HEADER_LENGTH
    assert parse_range(at_limit, SIZE) == partial((0, 1))
    assert parse_range(at_limit + ",", SIZE) == WHOLE
    # The longest number that fits is still read (and not refused by int()'s digit limit).
    assert parse_range("bytes=0-" + "9" * (MAX_HEADER_LENGTH - 8), SIZE) == partial((0, 99))


# --- properties ---------------------------------------------------------------------------------

sizes = st.integers(min_value=0, max_value=10**15)
positions = st.integers(min_value=0, max_value=10**16)


@st.composite
def range_spec(draw: st.DrawFn, size: int) -> str:
    """A valid range-spec, biased towards the edges of a ``size``-byte object."""
    edge = st.sampled_from(sorted({0, 1, max(size - 1, 0), size, size + 1})) | positions
    first = draw(edge)
    kind = draw(st.sampled_from(["closed", "open", "suffix"]))
    if kind == "open":
        return f"{first}-"
    if kind == "suffix":
        return f"-{first}"
    return f"{first}-{first + draw(edge)}"


@st.composite
def range_header(draw: st.DrawFn, size: int) -> str:
    """A valid Range header, with the optional whitespace and empty elements RFC 9110 allows."""
    ows = st.sampled_from(["", " ", "\t", "  "])
    specs = draw(st.lists(range_spec(size), min_size=1, max_size=DEFAULT_MAX_RANGES + 2))
    elements = [draw(ows) + spec + draw(ows) for spec in specs]
    for _ in range(draw(st.integers(0, 3))):
        elements.insert(draw(st.integers(0, len(elements))), draw(ows))
    unit = draw(st.sampled_from(["bytes", "BYTES", "Bytes"]))
    return f"{unit}={','.join(elements)}"


def slice_of(spec: str, size: int) -> range:
    """What a range-spec selects, by Python's slicing: an oracle independent of parse_range."""
    first, last = spec.strip(" \t").split("-")
    offsets = range(size)
    if not first:
        return offsets[-int(last) :] if int(last) else range(0)
    return offsets[int(first) : int(last) + 1] if last else offsets[int(first) :]


@given(st.text(), sizes)
def test_never_raises_on_arbitrary_text(header: str, size: int) -> None:
    result = parse_range(header, size)
    if isinstance(result, PartialBody):
        assert all(0 <= r.start <= r.end < size for r in result.ranges)


@given(st.text(alphabet="bytesBYTES=0123456789-, \t;x"), sizes)
def test_never_raises_on_range_like_text(header: str, size: int) -> None:
    result = parse_range(header, size)
    assert isinstance(result, WholeBody | Unsatisfiable | PartialBody)
    if isinstance(result, PartialBody):
        assert all(0 <= r.start <= r.end < size for r in result.ranges)
        assert sum(r.length for r in result.ranges) <= size


@given(st.data(), st.integers(min_value=0, max_value=10**6))
def test_valid_headers_match_the_slicing_oracle(data: st.DataObject, size: int) -> None:
    header = data.draw(range_header(size))
    specs = [element for element in header.split("=", 1)[1].split(",") if element.strip(" \t")]
    selected = [s for s in (slice_of(spec, size) for spec in specs) if s]
    result = parse_range(header, size)
    event(type(result).__name__)
    if len(specs) > DEFAULT_MAX_RANGES or sum(len(s) for s in selected) > size:
        assert result == WHOLE
    elif not selected:
        assert result == UNSATISFIABLE
    else:
        assert result == PartialBody(tuple(ByteRange(s[0], s[-1]) for s in selected))
        assert all(0 <= r.start <= r.end < size for r in result.ranges)


@given(positions, positions, sizes)
def test_single_closed_range(first: int, length: int, size: int) -> None:
    last = first + length
    result = parse_range(f"bytes={first}-{last}", size)
    if first < size:
        assert result == partial((first, min(last, size - 1)))
    else:
        assert result == UNSATISFIABLE


@given(positions, sizes)
def test_single_open_range(first: int, size: int) -> None:
    expected = partial((first, size - 1)) if first < size else UNSATISFIABLE
    assert parse_range(f"bytes={first}-", size) == expected


@given(st.integers(min_value=1, max_value=10**16), st.integers(min_value=1, max_value=10**15))
def test_suffix_range_is_the_last_n_bytes(n: int, size: int) -> None:
    result = parse_range(f"bytes=-{n}", size)
    assert result == partial((size - min(n, size), size - 1))
    assert isinstance(result, PartialBody)
    assert result.ranges[0].length == min(n, size)


other_units = st.text(alphabet=st.characters(codec="ascii")).filter(
    lambda unit: unit.strip(" \t").lower() != "bytes"
)


@given(other_units, sizes)
def test_other_units_are_ignored(unit: str, size: int) -> None:
    assert parse_range(f"{unit}=0-1", size) == WHOLE


# --- multipart/byteranges -----------------------------------------------------------------------

BOUNDARY = "THIS_STRING_SEPARATES"
CONTENT = b"0123456789abcdefghijklmnopqrstuvwxyz"


def assemble(content: bytes, parts: list[tuple[bytes, ByteRange]], closing: bytes) -> bytes:
    """The body a handler would stream: each part header, then its bytes; then the closing."""
    pieces = [piece for header, r in parts for piece in (header, content[r.start : r.end + 1])]
    return b"".join([*pieces, closing])


def split_multipart(body: bytes, boundary: str) -> list[tuple[dict[str, str], bytes]]:
    """A strict parser for what multipart_byteranges frames: headers and exact body of each part."""
    delimiter = b"\r\n--" + boundary.encode()
    preamble, *parts, last = body.split(delimiter)
    assert preamble == b""
    assert last == b"--\r\n"
    parsed = []
    for part in parts:
        assert part.startswith(b"\r\n")
        head, _, data = part[2:].partition(b"\r\n\r\n")
        fields = dict(line.split(": ", 1) for line in head.decode("ascii").split("\r\n"))
        parsed.append((fields, data))
    return parsed


def test_multipart_framing_is_exact() -> None:
    parts, closing, length = multipart_byteranges(
        [ByteRange(0, 2), ByteRange(10, 11)], len(CONTENT), "video/mp4", BOUNDARY
    )
    assert assemble(CONTENT, parts, closing) == (
        b"\r\n--THIS_STRING_SEPARATES\r\n"
        b"Content-Type: video/mp4\r\n"
        b"Content-Range: bytes 0-2/36\r\n"
        b"\r\n"
        b"012"
        b"\r\n--THIS_STRING_SEPARATES\r\n"
        b"Content-Type: video/mp4\r\n"
        b"Content-Range: bytes 10-11/36\r\n"
        b"\r\n"
        b"ab"
        b"\r\n--THIS_STRING_SEPARATES--\r\n"
    )
    assert length == len(assemble(CONTENT, parts, closing))
    assert [r for _, r in parts] == [ByteRange(0, 2), ByteRange(10, 11)]


def test_multipart_parses_back_with_the_email_package() -> None:
    ranges = [ByteRange(30, 35), ByteRange(0, 0), ByteRange(0, 9)]
    parts, closing, length = multipart_byteranges(ranges, len(CONTENT), "text/plain", BOUNDARY)
    body = assemble(CONTENT, parts, closing)
    assert len(body) == length
    message = email.message_from_bytes(
        f"Content-Type: multipart/byteranges; boundary={BOUNDARY}\r\n\r\n".encode() + body,
        policy=email.policy.HTTP,
    )
    assert message.is_multipart()
    assert not message.defects
    received = [
        (part["Content-Type"], part["Content-Range"], part.get_payload()) for part in message.iter_parts()
    ]
    assert received == [
        ("text/plain", "bytes 30-35/36", "uvwxyz"),
        ("text/plain", "bytes 0-0/36", "0"),
        ("text/plain", "bytes 0-9/36", "0123456789"),
    ]


@given(st.data(), st.binary(min_size=1, max_size=300))
def test_multipart_length_and_parts_round_trip(data: st.DataObject, content: bytes) -> None:
    size = len(content)
    offsets = st.integers(min_value=0, max_value=size - 1)
    pairs = data.draw(st.lists(st.tuples(offsets, offsets), min_size=1, max_size=DEFAULT_MAX_RANGES))
    ranges = [ByteRange(min(pair), max(pair)) for pair in pairs]
    boundary = make_boundary()
    parts, closing, length = multipart_byteranges(ranges, size, "application/octet-stream", boundary)
    body = assemble(content, parts, closing)
    assert len(body) == length
    assert split_multipart(body, boundary) == [
        (
            {"Content-Type": "application/octet-stream", "Content-Range": r.content_range(size)},
            content[r.start : r.end + 1],
        )
        for r in ranges
    ]


@pytest.mark.parametrize(
    ("ranges", "size", "content_type", "boundary"),
    [
        ([], 10, "text/plain", BOUNDARY),
        ([ByteRange(0, 10)], 10, "text/plain", BOUNDARY),  # past the end
        ([ByteRange(0, 1)], 10, "text/plain", ""),
        ([ByteRange(0, 1)], 10, "text/plain", "x" * 71),
        ([ByteRange(0, 1)], 10, "text/plain", "a b"),
        ([ByteRange(0, 1)], 10, "text/plain", "ab\r\nX-Injected: 1"),
        ([ByteRange(0, 1)], 10, "", BOUNDARY),
        ([ByteRange(0, 1)], 10, "text/plain\r\nX-Injected: 1", BOUNDARY),
        ([ByteRange(0, 1)], 10, "text/pla\u0131n", BOUNDARY),
    ],
)
def test_multipart_refuses_bad_input(
    ranges: list[ByteRange], size: int, content_type: str, boundary: str
) -> None:
    with pytest.raises(ValueError):
        multipart_byteranges(ranges, size, content_type, boundary)


def test_make_boundary_is_fresh_and_valid() -> None:
    boundaries = {make_boundary() for _ in range(100)}
    assert len(boundaries) == 100
    for boundary in boundaries:
        assert re.fullmatch(r"[0-9a-f]{32}", boundary)
        multipart_byteranges([ByteRange(0, 0)], 1, "text/plain", boundary)
