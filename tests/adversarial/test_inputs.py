"""Pathological values where the server parses input: Range and If-* headers, content
types at upload, multipart bodies, tus headers and metadata, ``?limit=``; then
hypothesis sends generated keys, prefixes, header values and metadata to the running
server. Every answer is the right 2xx or a JSON 4xx, never a 500.

Where the rules are pure functions (proxy.rules), they are the oracle: the live
answer must be what they decide for the bytes that were sent.
"""

from __future__ import annotations

import base64
from datetime import datetime
from email.utils import parsedate_to_datetime
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy.rules.conditions import evaluate_preconditions, if_range_allows_partial
from proxy.rules.content_types import InvalidContentType, validate_media_type
from proxy.rules.keys import is_valid_key, sanitize_filename, validate_list_prefix
from proxy.rules.ranges import PartialBody, Unsatisfiable, WholeBody, parse_range
from proxy.rules.tus import metadata_text
from tests.adversarial.conftest import (
    LIMIT,
    OFFSET,
    TUS,
    Answer,
    Live,
    b64,
    chunked,
    expect_error,
    form_part,
    form_type,
    multipart,
)

# Malformed part headers are sent on purpose: aiohttp warns of each one it reads.
pytestmark = [
    pytest.mark.filterwarnings("ignore::aiohttp.multipart.BadContentDispositionHeader"),
    pytest.mark.filterwarnings("ignore::aiohttp.multipart.BadContentDispositionParam"),
]
SIZE = 1000
DATA = bytes(range(256)) * 3 + bytes(232)
assert len(DATA) == SIZE
HYPOTHESIS = settings(
    max_examples=60,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def expected_download(headers: dict[str, str], etag: str, last_modified: datetime) -> int:
    """The status the rules give a GET of the SIZE-byte object with ``headers``."""
    failed = evaluate_preconditions("GET", headers, etag, last_modified)
    if failed is not None:
        return failed
    if "Range" not in headers or not if_range_allows_partial(headers.get("If-Range"), etag, last_modified):
        return 200
    decision = parse_range(headers["Range"], SIZE, max_ranges=16)
    return {WholeBody: 200, Unsatisfiable: 416, PartialBody: 206}[type(decision)]


def check_download(answer: Answer, status: int) -> None:
    assert answer.status == status, answer
    if status == 200:
        assert answer.body == DATA
    elif status == 206 and "Content-Range" in answer.headers:
        unit, _, span = answer.headers["Content-Range"].partition(" ")
        first, last = (int(n) for n in span.split("/")[0].split("-"))
        assert unit == "bytes" and answer.body == DATA[first : last + 1], answer.headers
    elif status == 206:
        assert answer.headers["Content-Type"].startswith("multipart/byteranges; boundary="), answer
    elif status == 416:
        assert answer.headers["Content-Range"] == f"bytes */{SIZE}"


async def stored_object(live: Live) -> tuple[str, datetime]:
    await live.put("r.bin", DATA, "video/mp4")
    head = await live.safe("HEAD", "/files/r.bin")
    return head.headers["ETag"], parsedate_to_datetime(head.headers["Last-Modified"])


RANGES = [
    "bytes=0-" + "9" * 4000,
    "bytes=" + "9" * 4000 + "-",
    "bytes=" + "9" * 5000 + "-",
    "bytes=" + ",".join(["0-0"] * 2000),
    "bytes=" + ",".join(f"{i}-{i}" for i in range(17)),
    "bytes=" + ",".join(["0-0"] * 16),
    "bytes=" + ",".join(f"{i * 10}-{i * 10 + 5}" for i in range(16)),
    "bytes=0-999,0-999",
    "bytes=-99999999999999999999",
    "bytes=-0",
    "bytes=5-4",
    "bytes=a-b",
    "bytes=--1",
    "bytes=0-1-2",
    "bytes = 0-1",
    "items=0-1",
    "bytes=\u0660-\u0661",
    "bytes=0x10-0x20",
    "bytes=1e3-",
    "bytes=,,,",
    "bytes=",
    "=",
    "",
    "bytes=0-1,",
    "bytes=\t0-1",
    "BYTES=0-1",
    "bytes=1000-",
    "bytes=999-",
    "bytes=\u00b9-\u00b2",
]
DATES = [
    "Sun, 31 Feb 2026 00:00:00 GMT",
    "Mon, 01 Jan 0000 00:00:00 GMT",
    "Sun, 06 Nov 99999 08:49:37 GMT",
    "Sunday, 06-Nov-94 08:49:37 GMT",
    "Sun Nov  6 08:49:37 1994",
    "Sun, 06 Nov 1994 25:61:61 GMT",
    "Fri, 31 Dec 9999 23:59:59 GMT",
    "0",
    "-1",
    "9" * 5000,
    "Sun, 06 Nov 1994 08:49:37 +0000",
]
TAGS = [
    '"x"',
    "*",
    'W/"x"',
    "garbage",
    '"unterminated',
    ", ".join(f'"{i}"' for i in range(1000)),
    'W/""',
    '""',
]


async def test_pathological_range_and_conditional_headers(live: Live) -> None:
    etag, modified = await stored_object(live)
    cases: list[dict[str, str]] = [{"Range": r} for r in RANGES]
    cases += [{name: d} for d in DATES for name in ("If-Modified-Since", "If-Unmodified-Since")]
    cases += [{name: t} for t in [*TAGS, etag, f"W/{etag}"] for name in ("If-Match", "If-None-Match")]
    cases += [{"Range": "bytes=0-9", "If-Range": v} for v in [*DATES, *TAGS, etag, f"W/{etag}"]]
    for headers in cases:
        expected = expected_download(headers, etag, modified)
        # HEAD answers as GET would (test_origin_and_content mirrors them in detail).
        for method in ("GET", "HEAD") if "Range" in headers else ("GET",):
            answer = await live.safe(method, "/files/r.bin", list(headers.items()))
            if method == "GET":
                check_download(answer, expected)
            else:
                assert answer.status == expected and answer.body == b"", (headers, answer)


# -- content types at upload -------------------------------------------------------------------------------

CONTENT_TYPES = [
    "vid\u00e9o/mp4",
    "video/mp4\u00a0",
    'text/plain; charset="utf-8"',
    'a/b; x="unterminated',
    "x" * 300 + "/y",
    "a/" + "b" * 254,
    "a/" + "b" * 255,
    "/",
    "a/",
    "/b",
    "a b/c",
    "a/b;",
    "a/b; ; ;",
    "text/html; charset=\u00e9",
    "application/octet-stream",
    "text/plain\u2028x",
    "\ufefftext/plain",
]


def acceptable(content_type: str) -> bool:
    try:
        validate_media_type(content_type)
    except InvalidContentType:
        return False
    return True


async def test_content_types_at_upload(live: Live) -> None:
    for number, content_type in enumerate(CONTENT_TYPES):
        ok = acceptable(content_type)
        put = await live.safe("PUT", f"/files/put-{number}", [("Content-Type", content_type)], b"x")
        form = multipart([form_part("file", b"x", f"post-{number}", content_type)])
        post = await live.safe("POST", "/files/", [form_type()], form)
        metadata = ("Upload-Metadata", f"filename {b64(f'tus-{number}')},filetype {b64(content_type)}")
        tus = await live.safe("POST", "/uploads/", [*TUS, ("Upload-Length", "0"), metadata])
        for answer, status in ((put, 201), (post, 201), (tus, 201)):
            if ok:
                assert answer.status == status, (content_type, answer)
            else:
                expect_error(answer, 400, "invalid_content_type", content_type)
        if ok:
            got = await live.safe("GET", f"/files/put-{number}")
            assert got.headers["Content-Type"] == content_type
    assert live.view.leftovers() == [] or all(i.startswith("upload ") for i in live.view.leftovers())


async def test_header_injection_through_content_types(live: Live) -> None:
    # CR LF ends the header: what follows is a header of the request, never of a download.
    injected = live.build("PUT", "/files/inj", [("Content-Type", "text/plain\r\nX-Injected: yes")], b"x")
    assert (await live.exchange(injected)).status == 201
    got = await live.safe("GET", "/files/inj")
    assert got.headers["Content-Type"] == "text/plain" and "X-Injected" not in got.headers
    for raw in (b"text/plain\rX: y", b"text/plain\x00", b"text/\x0bplain"):
        answer = await live.safe("PUT", "/files/raw", [("Content-Type", raw)], b"x")
        assert answer.status == 400 and answer.error in ("bad_request", "invalid_content_type"), answer
    # Encoded in tus metadata and multipart part headers, CR, LF and NUL reach the rules.
    for evil in ("text/plain\r\nX-Injected: yes", "text/plain\n", "text/plain\x00", "text/html\r"):
        metadata = ("Upload-Metadata", f"filetype {b64(evil)}")
        tus = await live.safe("POST", "/uploads/", [*TUS, ("Upload-Length", "0"), metadata])
        expect_error(tus, 400, "invalid_content_type", repr(evil))
    part = multipart([form_part("file", b"x", "p.txt", "text/plain\rX-Injected: yes")])
    answer = await live.safe("POST", "/files/", [form_type()], part)
    assert answer.status == 400 and answer.error in ("bad_multipart", "invalid_content_type"), answer
    assert live.view.keys() == ["inj"]
    assert live.view.leftovers() == []


# -- multipart abuse ---------------------------------------------------------------------------------------


async def test_too_many_parts(live: Live) -> None:
    fields = [form_part(f"f{i}", b"v") for i in range(1000)]
    body = multipart([*fields, form_part("file", b"late", "late.txt", "text/plain")])
    answer = expect_error(await live.safe("POST", "/files/", [form_type()], body), 400, "too_many_parts")
    assert answer.json()["stored"] == []
    fine = multipart([*fields[:999], form_part("file", b"ok", "ok.txt", "text/plain")])
    answer = await live.safe("POST", "/files/", [form_type()], fine)
    assert answer.status == 201 and [f["key"] for f in answer.json()["files"]] == ["ok.txt"], answer
    assert live.view.keys() == ["ok.txt"]
    assert live.view.leftovers() == []


async def test_fields_count_toward_the_upload_limit(live: Live) -> None:
    big = multipart([form_part("field", b"f" * (5 * LIMIT)), form_part("file", b"x", "x.txt", "text/plain")])
    announced = await live.safe("POST", "/files/", [form_type()], big)
    expect_error(announced, 413, "too_large")
    streamed = await live.safe(
        "POST", "/files/", [form_type(), ("Transfer-Encoding", "chunked")], chunked(*_pieces(big))
    )
    expect_error(streamed, 413, "too_large")
    assert streamed.json()["stored"] == []
    half = LIMIT // 2 + 1000
    split = multipart(
        [form_part("field", b"f" * half), form_part("file", b"x" * half, "x.txt", "text/plain")]
    )
    answer = await live.safe(
        "POST", "/files/", [form_type(), ("Transfer-Encoding", "chunked")], chunked(split)
    )
    expect_error(answer, 413, "too_large")
    assert live.view.keys() == [] and live.view.leftovers() == []


def _pieces(data: bytes, size: int = 64 * 1024) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


def bad_multiparts() -> dict[str, tuple[str, bytes]]:
    inner = multipart([form_part("file", b"inner", "inner.txt", "text/plain")], "inner-b")
    nested = (
        b'Content-Disposition: form-data; name="n"\r\nContent-Type: multipart/mixed; boundary=inner-b\r\n\r\n'
    )
    whole = multipart([form_part("file", b"data", "x.txt", "text/plain")])
    boundary_type = str(form_type()[1])
    return {
        "nested": (boundary_type, multipart([nested + inner])),
        "no closing boundary": (boundary_type, multipart([form_part("file", b"d", "x.txt")], close=False)),
        "cut inside a part": (boundary_type, whole[: len(whole) // 2]),
        "no boundary parameter": ("multipart/form-data", whole),
        "empty boundary": ("multipart/form-data; boundary=", whole),
        "other boundary": ("multipart/form-data; boundary=not-the-one", whole),
        "boundary of 200": ("multipart/form-data; boundary=" + "b" * 200, whole),
        "garbage body": (boundary_type, b"garbage"),
        "empty body": (boundary_type, b""),
        "only the closing": (boundary_type, b"--adv-boundary-7d3f--\r\n"),
        "no disposition": (boundary_type, multipart([b"Content-Type: text/plain\r\n\r\nx"])),
        "huge part head": (boundary_type, multipart([form_part("file", b"x", "x.txt", "a/" + "b" * 20000)])),
        "part head without end": (boundary_type, b"--adv-boundary-7d3f\r\nContent-Disposition: form-data"),
        "not multipart": ("text/plain", whole),
        "mixed, not form-data": ("multipart/mixed; boundary=adv-boundary-7d3f", whole),
    }


async def test_malformed_multipart_bodies(live: Live) -> None:
    for case, (content_type, body) in bad_multiparts().items():
        answer = await live.safe("POST", "/files/in/", [("Content-Type", content_type)], body)
        assert 400 <= answer.status < 500, (case, answer)
        if answer.status == 400:
            assert answer.error in ("bad_multipart", "no_files", "invalid_content_type"), (case, answer)
            assert answer.json().get("stored", []) == [], case
        assert live.view.keys() == [], case
    assert live.view.leftovers() == []


ODD_PART_HEADERS = [
    b"filename*=UTF-8''%ff%fe",
    b"filename*=UTF-8''%2e%2e",
    b"filename*=UTF-8''..%2f..%2fsecret.txt",
    b"filename*=bogus''abc",
    b'filename*0="a"; filename*1=".txt"',
    b'filename="a.txt"; filename="b.txt"',
    b'filename="a.txt"\r\nContent-Length: 99999999999999999999',
    b'filename="a.txt"\r\nContent-Length: -1',
    b'filename="a.txt"\r\nContent-Transfer-Encoding: base64',
    b'filename="a.txt"\r\nContent-Encoding: gzip',
    b'filename="\xff\xfe.txt"',
    b'filename="%ff"',
    b"filename='a.txt'",
]


async def test_odd_part_headers(live: Live) -> None:
    """Part headers parsers disagree on: a name that is one safe segment, or a 400."""
    for number, extra in enumerate(ODD_PART_HEADERS):
        head = b'Content-Disposition: form-data; name="f"; ' + extra
        body = multipart([head + b"\r\n\r\ndata"])
        answer = await live.safe("POST", f"/files/odd{number}/", [form_type()], body)
        assert answer.status in (201, 400), (extra, answer)
        if answer.status == 201:
            [stored] = answer.json()["files"]
            assert stored["key"].count("/") == 1 and is_valid_key(stored["key"]), (extra, stored)
            assert stored["key"].startswith(f"odd{number}/") and stored["size"] == 4, (extra, stored)
        else:
            assert answer.error in ("bad_multipart", "no_files", "invalid_key"), (extra, answer)
    assert live.view.leftovers() == []


# -- tus headers -------------------------------------------------------------------------------------------


async def test_tus_creation_header_abuse(live: Live) -> None:
    cases: list[tuple[list[tuple[str, str]], int, str]] = [
        ([("Upload-Metadata", f"filetype {b64('text/plain' + c)}")], 400, "invalid_content_type")
        for c in ("\r", "\n", "\x00", "\r\nX: y")
    ]
    cases += [
        ([("Upload-Metadata", "filename !!!")], 400, "invalid_header"),
        ([("Upload-Metadata", "filename YQ")], 400, "invalid_header"),
        ([("Upload-Metadata", "a b c")], 400, "invalid_header"),
        ([("Upload-Metadata", "a,,b")], 400, "invalid_header"),
        ([("Upload-Metadata", "a YQ==,a YQ==")], 400, "invalid_header"),
        ([("Upload-Metadata", "filename " + "QUFB" * 100)], 400, "invalid_key"),
        ([("Upload-Concat", "partial;x")], 400, "invalid_header"),
        ([("Upload-Concat", "final;/uploads/a /uploads/b")], 400, "invalid_header"),
        ([("Upload-Concat", "")], 400, "invalid_header"),
        ([("Upload-Defer-Length", "2")], 400, "invalid_header"),
        ([("Upload-Defer-Length", "1")], 400, "invalid_header"),  # with Upload-Length too
        ([("Tus-Resumable", "1.0.0, 0.2.2")], 412, "unsupported_version"),
        ([(OFFSET[0], "text/plain"), ("Content-Length", "1")], 415, "unsupported_media_type"),
    ]
    for length in ("9" * 19, str(LIMIT + 1)):
        cases.append(([("Upload-Length", length)], 413, "too_large"))
    for length in ("9" * 20, "-1", "1e3", "0x10", "\u0663", "", "5 5", "+5"):
        cases.append(([("Upload-Length", length)], 400, "invalid_header"))
    for extra, status, error in cases:
        names = {name for name, _ in extra}
        headers = [h for h in [*TUS, ("Upload-Length", "5")] if h[0] not in names]
        body = b"x" if "Content-Length" in names else None
        answer = await live.safe("POST", "/uploads/", [*headers, *extra], body)
        expect_error(answer, status, error, extra)
        if status in (400, 412, 413):
            assert answer.headers.get("Tus-Resumable") == "1.0.0", answer
    assert live.view.leftovers() == [] and live.view.keys() == []
    # What is odd but allowed: a value-less key, a non-UTF-8 or control-laden filename.
    odd_names = [b64(b"\xff\xfe"), b64("a\x00b"), b64("\u00e9\u0085")]
    for metadata in ("flag", *(f"filename {name}" for name in odd_names), " "):
        answer = await live.safe(
            "POST", "/uploads/", [*TUS, ("Upload-Length", "0"), ("Upload-Metadata", metadata)]
        )
        assert answer.status == 201, (metadata, answer)


async def test_tus_upload_header_abuse(live: Live) -> None:
    location = await live.tus_create(10)
    patch_cases: list[tuple[list[tuple[str, str]], int, str]] = [
        ([("Upload-Offset", "9" * 19)], 409, "offset_mismatch"),
        ([("Upload-Offset", "9" * 25)], 400, "invalid_header"),
        ([("Upload-Offset", "-0")], 400, "invalid_header"),
        ([("Upload-Offset", "0"), ("Upload-Checksum", "sha1 !!!")], 400, "invalid_header"),
        ([("Upload-Offset", "0"), ("Upload-Checksum", "sha1 " + b64(b"x" * 19))], 400, "invalid_header"),
        ([("Upload-Offset", "0"), ("Upload-Checksum", "crc32 AAAA")], 400, "invalid_header"),
        ([("Upload-Offset", "0"), ("Upload-Checksum", "sha256")], 400, "invalid_header"),
        ([("Upload-Offset", "0"), ("Upload-Checksum", "sha1 " + b64(b"x" * 20))], 460, "checksum_mismatch"),
        ([("Upload-Offset", "0"), ("Upload-Length", "9" * 19)], 400, "invalid_header"),
        ([("Upload-Offset", "0"), ("Content-Length", "11")], 413, "too_large"),
    ]
    for extra, status, error in patch_cases:
        length = dict(extra).get("Content-Length")
        body = b"y" * int(length) if length else b"yy"
        headers = [*TUS, OFFSET, *[h for h in extra if h[0] != "Content-Length"]]
        answer = await live.safe("PATCH", location, headers, body)
        expect_error(answer, status, error, extra)
        assert await live.tus_offset(location) == 0, extra
    for override in ("GET", "PUT", "OPTIONS", "", "PATCH, DELETE", "CONNECT", "TRACE", "DELETE "):
        headers = [*TUS, ("X-HTTP-Method-Override", override)]
        answer = await live.safe("POST", location, headers)
        if override.strip().upper() == "DELETE":
            assert answer.status in (204, 405), answer
            if answer.status == 204:
                location = await live.tus_create(10)
            continue
        expect_error(answer, 405, "method_not_allowed", override)
    answer = await live.safe(
        "POST",
        location,
        [*TUS, ("X-HTTP-Method-Override", "patch"), OFFSET, ("Upload-Offset", "0")],
        b"0123456789",
    )
    assert answer.status == 204, answer
    stored = live.view.keys()
    assert stored and all(not k.startswith(".") for k in stored)


# -- ?limit= -----------------------------------------------------------------------------------------------


async def test_listing_limits(live: Live) -> None:
    await live.put("a", b"x")
    await live.put("b", b"x")
    for raw in (
        "%C2%B2",
        "0",
        "1001",
        "-1",
        "+5",
        "%205",
        "5.0",
        "0x10",
        "",
        "%EF%BC%95",
        "1" * 20,
        "%00",
        "1e2",
    ):
        answer = await live.safe("GET", f"/files?limit={raw}")
        expect_error(answer, 400, "invalid_limit", raw)
    page = await live.safe("GET", "/files?limit=0001")
    assert page.status == 200 and len(page.json()["objects"]) == 1 and page.json()["next_cursor"] == "a"
    page = await live.safe("GET", "/files?limit=1000&limit=1")
    assert page.status == 200 and len(page.json()["objects"]) == 2


@pytest.mark.parametrize("backend", ["local"], indirect=True)
async def test_listing_limit_with_thousands_of_digits(live: Live) -> None:
    for digits in (4300, 4301, 8000):
        answer = await live.safe("GET", "/files?limit=" + "1" * digits)
        expect_error(answer, 400, "invalid_limit", digits)


# -- generated inputs --------------------------------------------------------------------------------------

FRAGMENTS = [
    "..",
    ".",
    "/",
    "\\",
    "%",
    "%2e",
    ".stream-proxy",
    "\x00",
    "\x7f",
    "\u0085",
    "\uff0e",
    "a",
    "\u00e9",
]
KEY_TEXT = (
    st.lists(
        st.one_of(st.sampled_from(FRAGMENTS), st.text(st.characters(codec="utf-8"), max_size=8)), max_size=8
    )
    .map("".join)
    .filter(bool)
)


@given(key=KEY_TEXT)
@HYPOTHESIS
async def test_generated_keys(live: Live, key: str) -> None:
    target = "/files/" + quote(key.encode("utf-8", "surrogatepass"), safe="")
    put = await live.safe("PUT", target, body=b"gen")
    if not is_valid_key(key):
        expect_error(put, 400, "invalid_key", key)
        expect_error(await live.safe("GET", target), 400, "invalid_key", key)
        return
    if put.status == 409:
        assert live.root is not None and put.error == "key_conflict", put
        return
    assert put.status == 201 and put.json()["key"] == key, put
    got = await live.safe("GET", target)
    assert (got.status, got.body) == (200, b"gen"), got
    assert (await live.safe("DELETE", target)).status == 204


@given(prefix=KEY_TEXT, cursor=st.one_of(st.none(), st.sampled_from(["a", "a/b", "zz", "\u00e9"])))
@HYPOTHESIS
async def test_generated_prefixes(live: Live, prefix: str, cursor: str | None) -> None:
    if not live.view.keys():
        for key in ("ab", "a/b", "a/.x", "\u00e9/\uff0e", "z/..z"):
            await live.put(quote(key), b"x")
    query = f"prefix={quote(prefix, safe='')}" + (f"&cursor={quote(cursor)}" if cursor else "")
    answer = await live.safe("GET", f"/files?{query}")
    try:
        validate_list_prefix(prefix)
    except ValueError:
        expect_error(answer, 400, "invalid_key", prefix)
        return
    assert answer.status == 200, answer
    keys = [o["key"] for o in answer.json()["objects"]]
    stored = live.view.keys()
    assert keys == sorted(k for k in stored if k.startswith(prefix) and (cursor is None or k > cursor))


VALIDATORS: dict[int, tuple[str, datetime]] = {}  # per server, of its one object
HEADER_TEXT = st.text(
    st.characters(min_codepoint=0x20, max_codepoint=0x2FF, exclude_characters="\x7f"), max_size=40
)


@given(
    range_value=st.one_of(st.none(), HEADER_TEXT, st.from_regex(r"bytes=[0-9,\- ]{0,30}", fullmatch=True)),
    condition=st.sampled_from(
        ["If-Match", "If-None-Match", "If-Modified-Since", "If-Unmodified-Since", "If-Range"]
    ),
    value=st.one_of(HEADER_TEXT, st.sampled_from(DATES + TAGS)),
)
@HYPOTHESIS
async def test_generated_download_headers(
    live: Live, range_value: str | None, condition: str, value: str
) -> None:
    if not live.view.keys():
        await live.put("r.bin", DATA, "video/mp4")
        head = await live.safe("HEAD", "/files/r.bin")
        VALIDATORS[live.port] = head.headers["ETag"], parsedate_to_datetime(head.headers["Last-Modified"])
    etag, modified = VALIDATORS[live.port]
    headers = {condition: value} | ({"Range": range_value} if range_value is not None else {})
    answer = await live.safe("GET", "/files/r.bin", list(headers.items()))
    # The parser strips optional whitespace around a value before the rules see it.
    seen = {name: v.strip(" \t") for name, v in headers.items()}
    check_download(answer, expected_download(seen, etag, modified))


@given(
    content_type=st.one_of(
        HEADER_TEXT, st.from_regex(r"[a-z]{1,5}/[a-z+.-]{1,8}(;[ a-z=\"]{0,12})?", fullmatch=True)
    )
)
@HYPOTHESIS
async def test_generated_content_types(live: Live, content_type: str) -> None:
    answer = await live.safe("PUT", "/files/ct", [("Content-Type", content_type)], b"x")
    seen = content_type.strip(" \t")
    if not seen or acceptable(seen):
        assert answer.status == 201, answer
        got = await live.safe("GET", "/files/ct")
        assert got.headers["Content-Type"] == (
            seen if seen and seen != "application/octet-stream" else "application/octet-stream"
        )
    else:
        expect_error(answer, 400, "invalid_content_type", content_type)


METADATA_KEY = st.text(
    st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters=","), min_size=1, max_size=6
)
FILETYPE = st.one_of(
    st.none(),
    st.sampled_from(
        ["video/mp4", "text/html", "image/svg+xml", "application/octet-stream", "a/b\r\n", "a/b\x00"]
    ),
    st.text(max_size=20),
)


@given(
    filename=st.one_of(st.none(), KEY_TEXT, st.binary(max_size=20), st.text(min_size=250, max_size=260)),
    filetype=FILETYPE,
    others=st.dictionaries(METADATA_KEY, st.one_of(st.none(), st.binary(max_size=12)), max_size=4),
)
@settings(HYPOTHESIS, max_examples=30)  # each example is an upload made and finished
async def test_generated_tus_metadata(
    live: Live, filename: str | bytes | None, filetype: str | None, others: dict[str, bytes | None]
) -> None:
    values: dict[str, bytes | None] = {k: v for k, v in others.items() if k not in ("filename", "filetype")}
    if filename is not None:
        values["filename"] = filename.encode() if isinstance(filename, str) else filename
    if filetype is not None:
        values["filetype"] = filetype.encode()
    header = ",".join(k if v is None else f"{k} {base64.b64encode(v).decode()}" for k, v in values.items())
    before = (live.view.keys(), live.view.leftovers())
    answer = await live.safe("POST", "/uploads/", [*TUS, ("Upload-Length", "0"), ("Upload-Metadata", header)])
    name = metadata_text(values, "filename")
    try:
        name = sanitize_filename(name) if name else None
    except ValueError:
        name = None
    declared = metadata_text(values, "filetype")
    if name is not None and len(name.encode()) > 255:
        expect_error(answer, 400, "invalid_key", header)
    elif declared and not acceptable(declared):
        expect_error(answer, 400, "invalid_content_type", header)
    else:
        assert answer.status == 201, (header, answer)
        upload_id = answer.headers["Location"].rsplit("/", 1)[1]
        key = f"{upload_id}/{name or upload_id}"
        got = await live.safe("GET", "/files/" + quote(key))
        assert got.status == 200 and got.body == b"", got
        if declared and declared != "application/octet-stream":
            assert got.headers["Content-Type"] == declared
        return
    assert (live.view.keys(), live.view.leftovers()) == before
