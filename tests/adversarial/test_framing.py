"""Framing abuse over raw sockets: request lines and heads aiohttp cannot parse,
bodies framed two ways or cut short, ``Expect: 100-continue`` on requests that will
be refused, and requests smuggled inside bodies.

Served through ProxyRunner, as ``stream-proxy serve`` runs it: what aiohttp's own
parser refuses is a JSON 400 with the common headers, and the connection is closed.
"""

from __future__ import annotations

import asyncio

import pytest

from tests.adversarial.conftest import (
    EVIL,
    LIMIT,
    OFFSET,
    TUS,
    Connection,
    Live,
    b64,
    chunked,
    expect_error,
    form_part,
    form_type,
    multipart,
)
from tests.conftest import wait_until

local = pytest.mark.parametrize("backend", ["local"], indirect=True)


def head(live: Live, first_line: bytes, *lines: bytes) -> bytes:
    """A request head exactly as given, with Host; no Connection: close, so that the
    server has to decide to close by itself."""
    return (
        first_line
        + b"\r\n"
        + b"Host: "
        + live.host.encode()
        + b"\r\n"
        + b"".join(line + b"\r\n" for line in lines)
        + b"\r\n"
    )


async def test_http_versions_other_than_1x_are_505_and_closed(live: Live) -> None:
    await live.put("x", b"x")
    for version in (b"HTTP/0.9", b"HTTP/2.0"):
        for method, extra in ((b"GET", b""), (b"PUT", b"Content-Length: 4")):
            request = head(live, method + b" /files/x " + version, *([extra] if extra else []))
            answer = live.check(await live.exchange(request + (b"evil" if extra else b"")), allow_5xx=[505])
            expect_error(answer, 505, "http_version_not_supported", version)
            assert answer.closed, (version, "the connection must be closed")
    # An HTTP/0.9 simple request (no version at all) is refused the same way.
    simple = live.check(await live.exchange(b"GET /files/x\r\n\r\n"), allow_5xx=[505])
    expect_error(simple, 505, "http_version_not_supported")
    assert live.view.get("x") == b"x"
    assert live.view.keys() == ["x"] and live.view.leftovers() == []


def unparseable(live: Live) -> dict[str, bytes]:
    host = b"Host: " + live.host.encode()
    put = b"PUT /files/smuggled HTTP/1.1\r\n" + host + b"\r\n"  # then more headers
    many = b"".join(b"X-H%d: v\r\n" % i for i in range(129))
    return {
        "HTTP/1.2": b"GET /files/x HTTP/1.2\r\n" + host + b"\r\n\r\n",
        "HTTP/3.0": b"GET /files/x HTTP/3.0\r\n" + host + b"\r\n\r\n",
        "HTTP/1.10": b"GET /files/x HTTP/1.10\r\n" + host + b"\r\n\r\n",
        "HTTP/2 without minor": b"GET /files/x HTTP/2\r\n" + host + b"\r\n\r\n",
        "lower-case version": b"GET /files/x http/1.1\r\n" + host + b"\r\n\r\n",
        "HTTP/2 preface": b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        "junk after version": b"GET /files/x HTTP/1.1 extra\r\n" + host + b"\r\n\r\n",
        "request line over 8190": b"GET /files/" + b"a" * 8200 + b" HTTP/1.1\r\n" + host + b"\r\n\r\n",
        "header over 8190": b"GET /files/x HTTP/1.1\r\n" + host + b"\r\nX-Long: " + b"a" * 8200 + b"\r\n\r\n",
        "129 headers": b"GET /files/x HTTP/1.1\r\n" + host + b"\r\n" + many + b"\r\n",
        "obs-fold": b"GET /files/x HTTP/1.1\r\n" + host + b"\r\nX-A: 1\r\n  folded\r\n\r\n",
        "NUL in a header": b"GET /files/x HTTP/1.1\r\n" + host + b"\r\nX-A: a\x00b\r\n\r\n",
        "space before colon": b"GET /files/x HTTP/1.1\r\n" + host + b"\r\nHost : x\r\n\r\n",
        "no colon": b"GET /files/x HTTP/1.1\r\n" + host + b"\r\nNoColon\r\n\r\n",
        "bare LF": b"GET /files/x HTTP/1.1\n" + host + b"\n\n",
        "raw UTF-8 in the target": "GET /files/\uff0e\uff0e/x HTTP/1.1\r\n".encode() + host + b"\r\n\r\n",
        "no leading slash": b"GET files/x HTTP/1.1\r\n" + host + b"\r\n\r\n",
        "CL and TE": put + b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked(b"hello"),
        "two CLs": put + b"Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
        "negative CL": put + b"Content-Length: -5\r\n\r\nhello",
        "signed CL": put + b"Content-Length: +5\r\n\r\nhello",
        "hex CL": put + b"Content-Length: 0x5\r\n\r\nhello",
        "huge CL": put + b"Content-Length: 99999999999999999999999\r\n\r\nhello",
        "TE identity": put + b"Transfer-Encoding: identity\r\n\r\nhello",
        "TE gzip": put + b"Transfer-Encoding: gzip\r\n\r\nhello",
        "TE twice": put + b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked(b"x"),
        "chunk size not hex": put + b"Transfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
        "chunk size negative": put + b"Transfer-Encoding: chunked\r\n\r\n-1\r\nhello\r\n0\r\n\r\n",
        "chunk size huge": put
        + b"Transfer-Encoding: chunked\r\n\r\nffffffffffffffffffffff\r\nhello\r\n0\r\n\r\n",
        "chunk data too long": put + b"Transfer-Encoding: chunked\r\n\r\n5\r\nhelloXX\r\n0\r\n\r\n",
        "chunk size with space": put + b"Transfer-Encoding: chunked\r\n\r\n5 5\r\nhello\r\n0\r\n\r\n",
        "Content-Length in trailer": put
        + b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nContent-Length: 5\r\n\r\n",
    }


async def test_unparseable_requests_are_json_400_and_closed(live: Live) -> None:
    await live.put("x", b"x")
    for case, request in unparseable(live).items():
        answer = live.check(await live.exchange(request))
        expect_error(answer, 400, "bad_request", case)
        assert answer.closed, (case, "the connection must be closed after a request it cannot parse")
    assert live.view.keys() == ["x"] and live.view.get("x") == b"x"
    assert live.view.leftovers() == []


async def test_truncated_bodies_leave_nothing(live: Live) -> None:
    """A body that ends early (the client half-closes, or goes away) stores nothing."""
    host = b"Host: " + live.host.encode() + b"\r\n"
    cases = {
        "chunked cut in a chunk": (b"Transfer-Encoding: chunked\r\n", b"5\r\nhello\r\n10\r\nabc"),
        "chunked without last chunk": (b"Transfer-Encoding: chunked\r\n", b"5\r\nhello\r\n"),
        "chunked cut in a size": (b"Transfer-Encoding: chunked\r\n", b"5\r\nhello\r\nff"),
        "Content-Length short": (b"Content-Length: 1000\r\n", b"abc" * 100),
    }
    for case, (framing, body) in cases.items():
        for how in ("half-close", "abort"):
            conn = await Connection.open(live.port)
            await conn.send(b"PUT /files/cut HTTP/1.1\r\n" + host + framing + b"\r\n" + body)
            await asyncio.sleep(0.05)
            if how == "half-close":
                conn.shutdown_write()
                answer = live.check(await conn.read_answer(wait=10), allow_no_answer=True)
                assert answer.status in (0, 400), (case, answer)
            else:
                conn.writer.transport.abort()
            await conn.close()
            await wait_until(lambda: live.view.leftovers() == [], 10)
            assert live.view.keys() == [], (case, how)


async def test_truncated_multipart_and_tus_bodies(live: Live) -> None:
    """A cut-off multipart body stores no partial file; a cut-off tus PATCH keeps the
    bytes that arrived, publishes nothing, and the upload goes on."""
    host = b"Host: " + live.host.encode() + b"\r\n"
    part = multipart([form_part("file", b"x" * 5000, "cut.bin", "application/octet-stream")])
    conn = await Connection.open(live.port)
    content_type = form_type()[1]
    assert isinstance(content_type, str)
    await conn.send(
        b"POST /files/in/ HTTP/1.1\r\n"
        + host
        + f"Content-Type: {content_type}\r\nContent-Length: {len(part)}\r\n\r\n".encode()
        + part[:3000]
    )
    await asyncio.sleep(0.05)
    conn.shutdown_write()
    live.check(await conn.read_answer(wait=10), allow_no_answer=True)
    await conn.close()
    await wait_until(lambda: live.view.leftovers() == [], 10)
    assert live.view.keys() == []

    location = await live.tus_create(100)
    conn = await Connection.open(live.port)
    await conn.send(
        f"PATCH {location} HTTP/1.1\r\n".encode()
        + host
        + b"Tus-Resumable: 1.0.0\r\nContent-Type: application/offset+octet-stream\r\n"
        + b"Upload-Offset: 0\r\nContent-Length: 50\r\n\r\n"
        + b"a" * 20
    )
    await asyncio.sleep(0.2)
    conn.shutdown_write()
    live.check(await conn.read_answer(wait=10), allow_no_answer=True)
    await conn.close()

    async def offset() -> int:
        for _ in range(100):
            answer = await live.safe("HEAD", location, TUS)
            if answer.status == 200:
                return int(answer.headers["Upload-Offset"])
            assert answer.status == 423, answer  # still held by the cut-off request
            await asyncio.sleep(0.1)
        raise AssertionError("the upload stays locked")

    # The cut-off request may still be saving what it kept: a client asks again.
    for _ in range(100):
        kept = await offset()
        assert kept in (0, 20)
        assert live.view.keys() == []
        rest = b"a" * (100 - kept)
        answer = await live.safe("PATCH", location, [*TUS, OFFSET, ("Upload-Offset", str(kept))], rest)
        if answer.status == 204:
            break
        assert answer.status in (409, 423), answer
        await asyncio.sleep(0.1)
    [key] = live.view.keys()
    assert live.view.get(key) == b"a" * 100


# -- Expect: 100-continue ----------------------------------------------------------------------------------


async def expect_head(
    live: Live, method: str, target: str, headers: list[tuple[str, str]]
) -> tuple[Connection, bytes]:
    conn = await Connection.open(live.port)
    lines = [f"{method} {target} HTTP/1.1", f"Host: {live.host}", "Expect: 100-continue"]
    lines += [f"{name}: {value}" for name, value in headers]
    request = ("\r\n".join(lines) + "\r\n\r\n").encode()
    await conn.send(request)
    return conn, request


async def refused_before_body(live: Live, method: str, target: str, headers: list[tuple[str, str]]) -> str:
    """Send only the head with Expect: 100-continue; the answer must be the error, at
    once, never 100 Continue. Returns the error."""
    conn, _ = await expect_head(live, method, target, headers)
    try:
        answer = live.check(await conn.read_answer(wait=5))
        assert answer.status != 100, f"{method} {target} {headers}: 100 Continue for a request it refuses"
        assert answer.status >= 400, answer
        # A client may send the body anyway: it is read past (or the connection
        # closed), never answered as a request of its own.
        length = dict(headers).get("Content-Length", "0")
        if int(length) <= 100:
            await conn.send(b"G" * int(length))
        _, extra = await conn.wait_closed(1)
        assert extra == b"", f"{method} {target} {headers}: more after the answer: {extra[:100]!r}"
    finally:
        await conn.close()
    assert answer.error is not None
    return answer.error


async def test_expect_continue_refusals_come_before_the_body(live: Live) -> None:
    await live.put("victim", b"victim")
    location = await live.tus_create(10)
    boundary = form_type()[1]
    assert isinstance(boundary, str)
    size = str(LIMIT + 1)
    cases: list[tuple[str, str, list[tuple[str, str]], str]] = [
        ("PUT", "/files/%2e%2e/x", [("Content-Length", "5")], "invalid_key"),
        ("PUT", "/files/.stream-proxy/tmp/x", [("Content-Length", "5")], "invalid_key"),
        ("PUT", "/files/big", [("Content-Length", size)], "too_large"),
        (
            "PUT",
            "/files/x",
            [("Content-Length", "5"), ("Content-Type", "not a type")],
            "invalid_content_type",
        ),
        (
            "PUT",
            "/files/x",
            [("Content-Length", "5"), ("Content-Type", "text/html\u00e9")],
            "invalid_content_type",
        ),
        ("PUT", "/files/x", [("Content-Length", "5"), ("Origin", EVIL)], "cross_origin_refused"),
        (
            "PUT",
            "/files/x",
            [("Content-Length", "5"), ("Sec-Fetch-Site", "cross-site")],
            "cross_origin_refused",
        ),
        (
            "PUT",
            "/files/x",
            [("Transfer-Encoding", "chunked"), ("Content-Type", "a/b c")],
            "invalid_content_type",
        ),
        (
            "POST",
            "/files/",
            [("Content-Length", "5"), ("Content-Type", "text/plain")],
            "unsupported_media_type",
        ),
        ("POST", "/files/%2e%2e/", [("Content-Length", "5"), ("Content-Type", boundary)], "invalid_key"),
        ("POST", "/files", [("Content-Length", size), ("Content-Type", boundary)], "too_large"),
        (
            "POST",
            "/files",
            [("Content-Length", "5"), ("Content-Type", boundary), ("Origin", EVIL)],
            "cross_origin_refused",
        ),
        (
            "POST",
            "/uploads/",
            [("Tus-Resumable", "0.2.2"), ("Upload-Length", "5"), ("Content-Length", "5")],
            "unsupported_version",
        ),
        (
            "POST",
            "/uploads/",
            [*TUS, ("Upload-Length", "5"), ("Content-Length", "5"), ("Content-Type", "text/plain")],
            "unsupported_media_type",
        ),
        (
            "POST",
            "/uploads/",
            [*TUS, ("Upload-Length", "5"), ("Content-Length", "5"), OFFSET, ("Origin", EVIL)],
            "cross_origin_refused",
        ),
        ("PATCH", location, [("Upload-Offset", "0"), ("Content-Length", "5"), OFFSET], "unsupported_version"),
        (
            "PATCH",
            location,
            [*TUS, ("Upload-Offset", "0"), ("Content-Length", "5")],
            "unsupported_media_type",
        ),
        (
            "PATCH",
            location,
            [*TUS, ("Upload-Offset", "0"), ("Content-Length", "5"), OFFSET, ("Origin", EVIL)],
            "cross_origin_refused",
        ),
        (
            "POST",
            location,
            [*TUS, ("X-HTTP-Method-Override", "PATCH"), ("Upload-Offset", "0"), ("Content-Length", "5")],
            "unsupported_media_type",
        ),
    ]
    got = await asyncio.gather(*(refused_before_body(live, m, t, h) for m, t, h, _ in cases))
    for (method, target, headers, error), found in zip(cases, got, strict=True):
        assert found == error, (method, target, headers, found)
    # The only expectation known is 100-continue.
    other = live.build("PUT", "/files/x", [("Expect", "200-ok"), ("Content-Length", "5")], close=False)
    expect_error(live.check(await live.exchange(other, close_wait=0.3)), 417, "expectation_failed")
    assert live.view.keys() == ["victim"]
    assert await live.tus_offset(location) == 0


async def test_expect_continue_then_body(live: Live) -> None:
    """A request that passes gets 100 Continue, then its answer once the body is in."""
    boundary = form_type()[1]
    assert isinstance(boundary, str)
    form = multipart([form_part("file", b"form", "f.txt", "text/plain")])
    location = await live.tus_create(8)
    cases: list[tuple[str, str, list[tuple[str, str]], bytes, int]] = [
        ("PUT", "/files/good.txt", [("Content-Length", "4")], b"good", 201),
        ("PUT", "/files/chunked.txt", [("Transfer-Encoding", "chunked")], chunked(b"chun", b"ked"), 201),
        ("PUT", "/files/same-origin.txt", [("Content-Length", "4"), ("Origin", live.origin)], b"same", 201),
        ("POST", "/files/in/", [("Content-Length", str(len(form))), ("Content-Type", boundary)], form, 201),
        ("POST", "/uploads/", [*TUS, ("Upload-Length", "3"), ("Content-Length", "3"), OFFSET], b"tus", 201),
        ("PATCH", location, [*TUS, ("Upload-Offset", "0"), ("Content-Length", "4"), OFFSET], b"half", 204),
        (
            "POST",
            location,
            [
                *TUS,
                ("X-HTTP-Method-Override", "PATCH"),
                ("Upload-Offset", "4"),
                ("Content-Length", "4"),
                OFFSET,
            ],
            b"more",
            204,
        ),
    ]
    for method, target, headers, body, status in cases:
        conn, _ = await expect_head(live, method, target, headers)
        try:
            interim = await conn.read_answer(wait=5)
            assert interim.status == 100 and interim.headers.get("Content-Length") is None, (target, interim)
            await conn.send(body)
            final = live.check(await conn.read_answer(wait=10))
        finally:
            await conn.close()
        assert final.status == status, (method, target, final)
    assert live.view.get("good.txt") == b"good"
    assert live.view.get("chunked.txt") == b"chunked"
    assert live.view.get("in/f.txt") == b"form"
    assert await live.tus_offset(location) == 8
    # Finished tus uploads keep their record until they expire; nothing else is left.
    assert all(item.startswith("upload ") for item in live.view.leftovers())


async def test_http_10_with_expect_gets_no_interim_answer(live: Live) -> None:
    request = b"PUT /files/old.txt HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\nold"
    answer = live.check(await live.exchange(request))
    assert answer.status == 201 and answer.interim == [], answer
    assert answer.version == "HTTP/1.0"
    assert live.view.get("old.txt") == b"old"


TUS_EXPECT_GAPS = {
    "Upload-Length over server.max_upload_bytes": [("Upload-Length", str(LIMIT + 1))],
    "Content-Length over server.max_upload_bytes": [
        ("Upload-Length", str(LIMIT + 10)),
        ("Content-Length", str(LIMIT + 1)),
    ],
    "filename making a key too long": [
        ("Upload-Length", "5"),
        ("Upload-Metadata", f"filename {b64('f' * 300)}"),
    ],
    "filetype that is no media type": [
        ("Upload-Length", "5"),
        ("Upload-Metadata", f"filetype {b64('text/html; x')}"),
    ],
    "a final upload (tus concatenation) with a body": [("Upload-Concat", "final;/uploads/" + "0" * 32)],
}


@local
@pytest.mark.parametrize("case", TUS_EXPECT_GAPS)
async def test_expect_continue_on_tus_creation_checks_what_creation_checks(live: Live, case: str) -> None:
    headers = [*TUS, OFFSET, *TUS_EXPECT_GAPS[case]]
    if not any(name == "Content-Length" for name, _ in headers):
        headers.append(("Content-Length", "5"))
    await refused_before_body(live, "POST", "/uploads/", headers)


@local
async def test_expect_continue_on_tus_patch_checks_the_size(live: Live) -> None:
    location = await live.tus_create(None)
    headers = [*TUS, OFFSET, ("Upload-Offset", "0"), ("Content-Length", str(LIMIT + 1))]
    assert await refused_before_body(live, "PATCH", location, headers) == "too_large"


# -- smuggling -----------------------------------------------------------------------------------------------


async def test_requests_smuggled_in_refused_bodies_are_not_run(live: Live) -> None:
    """Bodies the server refuses without reading are never parsed as requests."""
    await live.put("victim", b"victim")
    smuggled = f"DELETE /files/victim HTTP/1.1\r\nHost: {live.host}\r\n\r\n".encode()
    padded = smuggled + b"x" * (LIMIT + 1 - len(smuggled))
    requests = {
        "bad key": live.build("PUT", "/files/%2e%2e/x", [], smuggled, close=False),
        "bad key, expect": live.build(
            "PUT", "/files/%2e%2e/x", [("Expect", "100-continue")], smuggled, close=False
        ),
        "too large": live.build("PUT", "/files/big", [], padded, close=False),
        "cross-origin": live.build("PUT", "/files/x", [("Origin", EVIL)], smuggled, close=False),
        "unsupported type": live.build(
            "POST", "/files", [("Content-Type", "text/plain")], smuggled, close=False
        ),
        "tus version": live.build("PATCH", "/uploads/" + "0" * 32, [OFFSET], smuggled, close=False),
        "CL and TE": live.build(
            "PUT",
            "/files/y",
            [("Content-Length", "5"), ("Transfer-Encoding", "chunked")],
            b"0\r\n\r\n" + smuggled,
            close=False,
        ),
        "HTTP/2.0": live.build("PUT", "/files/y", [], smuggled, version="HTTP/2.0", close=False),
    }

    async def one(case: str, request: bytes) -> None:
        conn = await Connection.open(live.port)
        try:
            await conn.send(request)
            first = live.check(await conn.read_answer(wait=5), allow_5xx=[505])
            assert first.status >= 400, (case, first)
            _, extra = await conn.wait_closed(1.5)
        finally:
            await conn.close()
        assert b"HTTP/1.1 204" not in extra, f"{case}: the smuggled DELETE was run"

    await asyncio.gather(*(one(case, request) for case, request in requests.items()))
    assert live.view.keys() == ["victim"]
    assert (await live.safe("GET", "/files/victim")).body == b"victim"


async def test_pipelined_requests_after_a_refused_body_stay_separate(live: Live) -> None:
    """A refused request that the server reads to its end (its body framed by
    Content-Length) may keep the connection; the next request is then the next one,
    not its body."""
    await live.put("victim", b"victim")
    smuggled = f"DELETE /files/victim HTTP/1.1\r\nHost: {live.host}\r\n\r\n".encode()
    first = live.build("PUT", "/files/x", [("Content-Type", "not a type")], smuggled, close=False)
    second = live.build("GET", "/files/victim", [], close=True)
    conn = await Connection.open(live.port)
    try:
        await conn.send(first + second)
        answers = [live.check(await conn.read_answer(wait=5))]
        _, rest = await conn.wait_closed(1.5)
    finally:
        await conn.close()
    expect_error(answers[0], 400, "invalid_content_type")
    assert b"HTTP/1.1 204" not in rest
    assert live.view.keys() == ["victim"]


async def test_odd_methods_and_client_request_ids(live: Live) -> None:
    await live.put("x", b"x")
    for method in ("OPTIONS", "TRACE", "PROPFIND", "MOVE", "CONNECT", "PATCH", "BREW"):
        answer = await live.safe(method, "/files/x", [("X-Request-ID", "../../etc/passwd")])
        assert answer.status in (400, 404, 405), (method, answer)  # llhttp knows no BREW
        if answer.status == 405:
            assert answer.error == "method_not_allowed" and "Allow" in answer.headers, answer
        assert answer.headers["X-Request-ID"] != "../../etc/passwd"
    for raw in (b"get /files/x HTTP/1.1", b"G\x00T /files/x HTTP/1.1", b"GET\t/files/x HTTP/1.1"):
        answer = live.check(await live.exchange(head(live, raw)))
        assert 400 <= answer.status < 500, (raw, answer)
    ids = {
        (await live.safe("GET", "/files/x", [("X-Request-ID", "fixed")])).headers["X-Request-ID"]
        for _ in range(3)
    }
    assert len(ids) == 3 and "fixed" not in ids
    assert live.view.keys() == ["x"]
