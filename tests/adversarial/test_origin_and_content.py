"""Pages of other sites may not change what is stored; what is stored may not run as a
page of this server; a failing storage service is reported without naming it; and a
HEAD with Range answers with the head its GET would send.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import replace
from urllib.parse import quote

import pytest

from tests.adversarial.conftest import (
    EVIL,
    INLINE,
    OFFSET,
    TRUSTED,
    TUS,
    Answer,
    Header,
    Live,
    StartLive,
    b64,
    expect_error,
    form_part,
    form_type,
    multipart,
)
from tests.conftest import Backend, free_port

SANDBOXED = {"Content-Disposition": "attachment", "Content-Security-Policy": "sandbox"}


async def writes(live: Live, origin: list[Header]) -> dict[str, Answer]:
    """Every kind of state-changing request, each with the ``origin`` headers. The
    objects and uploads they aim at exist; returns their answers by name."""
    upload = await live.tus_create(10)
    doomed = await live.tus_create(10)
    form = multipart([form_part("file", b"posted", "posted.txt", "text/plain")])
    patch = [*TUS, OFFSET, ("Upload-Offset", "0")]
    return {
        "PUT": await live.safe("PUT", "/files/put.txt", origin, b"put"),
        "POST": await live.safe("POST", "/files/in/", [form_type(), *origin], form),
        "DELETE": await live.safe("DELETE", "/files/victim", origin),
        "tus POST": await live.safe("POST", "/uploads/", [*TUS, ("Upload-Length", "3"), *origin]),
        "tus creation-with-upload": await live.safe(
            "POST", "/uploads/", [*TUS, ("Upload-Length", "3"), OFFSET, *origin], b"abc"
        ),
        "tus PATCH": await live.safe("PATCH", upload, [*patch, *origin], b"01234"),
        "tus PATCH by override": await live.safe(
            "POST", upload, [*patch, ("X-HTTP-Method-Override", "PATCH"), *origin], b"01234"
        ),
        "tus DELETE": await live.safe("DELETE", doomed, [*TUS, *origin]),
        "tus DELETE by override": await live.safe(
            "POST", doomed, [*TUS, ("X-HTTP-Method-Override", "DELETE"), *origin]
        ),
    }


CROSS = {
    "another site": [("Origin", EVIL)],
    "opaque origin": [("Origin", "null")],
    "empty origin": [("Origin", "")],
    "another port": [("Origin", "http://127.0.0.1:1")],
    "https on this host": [("Origin", "https://{host}")],
    "this host without its port": [("Origin", "http://127.0.0.1")],
    "localhost for 127.0.0.1": [("Origin", "http://localhost:{port}")],
    "a suffix of this origin": [("Origin", "http://{host}.evil.example")],
    "an origin with a path": [("Origin", TRUSTED + "/")],
    "trusted as a prefix": [("Origin", TRUSTED + ".evil.example")],
    "trusted over http": [("Origin", TRUSTED.replace("https", "http"))],
    "two origins": [("Origin", f"{TRUSTED} {EVIL}")],
    "fetch metadata only": [("Sec-Fetch-Site", "cross-site")],
    "fetch metadata in capitals": [("Sec-Fetch-Site", "Cross-Site")],
    "cross-site fetch with another origin": [("Origin", EVIL), ("Sec-Fetch-Site", "same-origin")],
}
SAME = {
    "no origin": [],
    "own origin": [("Origin", "http://{host}")],
    "allowed origin": [("Origin", TRUSTED)],
    "allowed origin with its default port": [("Origin", TRUSTED + ":443")],
    "allowed origin in capitals": [("Origin", TRUSTED.upper().replace("HTTPS", "https"))],
    "own origin, fetch says cross-site": [("Origin", "http://{host}"), ("Sec-Fetch-Site", "cross-site")],
    "same-site fetch": [("Sec-Fetch-Site", "same-site")],
    "user-initiated fetch": [("Sec-Fetch-Site", "none")],
}


def fill(live: Live, headers: Sequence[Header]) -> list[Header]:
    return [(n, v.format(host=live.host, port=live.port) if isinstance(v, str) else v) for n, v in headers]


async def test_cross_origin_writes_are_refused(live: Live) -> None:
    await live.put("victim", b"victim")
    for case, headers in CROSS.items():
        before = live.view.leftovers()
        answers = await writes(live, fill(live, headers))
        for name, answer in answers.items():
            expect_error(answer, 403, "cross_origin_refused", (case, name))
        assert live.view.keys() == ["victim"] and live.view.get("victim") == b"victim", case
        made = [item.removeprefix("upload ") for item in live.view.leftovers() if item not in before]
        assert len(made) == 2, case  # the two uploads made for the test, untouched
        for upload_id in made:
            assert await live.tus_offset(f"/uploads/{upload_id}") == 0, case


async def test_same_origin_and_allowed_writes_pass(live: Live) -> None:
    expected = {
        "PUT": 201,
        "POST": 201,
        "DELETE": 204,
        "tus POST": 201,
        "tus creation-with-upload": 201,
        "tus PATCH": 204,
        "tus PATCH by override": 409,  # the first PATCH moved the offset to 5
        "tus DELETE": 204,
        "tus DELETE by override": 404,  # already terminated
    }
    for case, headers in SAME.items():
        await live.put("victim", b"victim")
        answers = await writes(live, fill(live, headers))
        assert {name: a.status for name, a in answers.items()} == expected, (case, answers)
        stored = live.view.keys()
        assert "put.txt" in stored and "in/posted.txt" in stored and "victim" not in stored, case


async def test_reads_from_other_origins_pass(live: Live) -> None:
    await live.put("page.txt", b"text")
    origin = [("Origin", EVIL), ("Sec-Fetch-Site", "cross-site")]
    location = await live.tus_create(4)
    assert (await live.safe("GET", "/files/page.txt", origin)).body == b"text"
    assert (await live.safe("HEAD", "/files/page.txt", origin)).status == 200
    assert (await live.safe("GET", "/files", origin)).status == 200
    assert (await live.safe("HEAD", location, [*TUS, *origin])).status == 200
    assert (await live.safe("OPTIONS", "/uploads/", origin)).status == 204


async def test_cross_origin_refusal_before_expect_continue_and_body(live: Live) -> None:
    """Refused before the body is asked for: a 100 Continue would let the page send it."""
    request = live.build("PUT", "/files/x", [("Origin", EVIL), ("Expect", "100-continue")], close=False)
    request = request.replace(b"\r\n\r\n", b"\r\nContent-Length: 5\r\n\r\n")
    answer = live.check(await live.exchange(request, close_wait=0.5))
    expect_error(answer, 403, "cross_origin_refused")
    assert answer.interim == []
    assert live.view.keys() == []


# -- active content ----------------------------------------------------------------------------------------

ACTIVE = [
    "text/html",
    "TEXT/HTML; charset=utf-8",
    "application/xhtml+xml",
    "image/svg+xml",
    "text/xml",
    "application/xml",
    "application/atom+xml",
    "application/rss+xml; charset=utf-8",
    "application/javascript",
    "text/javascript",
    "application/x-javascript",
    "text/ecmascript",
    "text/xsl",
    "multipart/x-mixed-replace; boundary=x",
]
INERT = ["video/mp4", "image/png", "text/plain", "application/json", "application/pdf", "text/csv"]
# Keys uploaded without a type (or as application/octet-stream) that are guessed active.
GUESSED = ["page.html", "page.htm", "drawing.svg", "feed.xml", "script.js", "doc.xhtml"]


def assert_sandboxed(answer: Answer, case: object) -> None:
    for name, value in SANDBOXED.items():
        assert answer.headers.get(name) == value, (case, answer)
    assert answer.headers.get("X-Content-Type-Options") == "nosniff"


def assert_inline(answer: Answer, case: object) -> None:
    assert "Content-Disposition" not in answer.headers, (case, answer)
    assert "Content-Security-Policy" not in answer.headers, (case, answer)
    assert answer.headers.get("X-Content-Type-Options") == "nosniff"


async def downloads(live: Live, key: str) -> list[Answer]:
    """GET, HEAD, a one-range GET and a two-range GET of ``key``."""
    target = "/files/" + quote(key)
    return [
        await live.safe("GET", target),
        await live.safe("HEAD", target),
        await live.safe("GET", target, [("Range", "bytes=0-3")]),
        await live.safe("GET", target, [("Range", "bytes=0-1,3-4")]),
    ]


async def test_active_content_is_a_sandboxed_attachment(live: Live) -> None:
    body = b"<html><script>alert(document.domain)</script></html>"
    for number, content_type in enumerate(ACTIVE):
        await live.put(f"active/{number}", body, content_type)
        for answer in await downloads(live, f"active/{number}"):
            assert answer.status in (200, 206), answer
            assert_sandboxed(answer, content_type)
        got = await live.safe("GET", f"/files/active/{number}")
        assert got.headers["Content-Type"] == content_type
    for key in GUESSED:
        for declared in (None, "application/octet-stream"):
            await live.put(f"guessed/{key}", body, declared)
            for answer in await downloads(live, f"guessed/{key}"):
                assert_sandboxed(answer, (key, declared))
    # Through the other ways in: a multipart part's type and a tus filetype.
    form = multipart([form_part("file", body, "part.html", "text/html")])
    assert (await live.safe("POST", "/files/posted/", [form_type()], form)).status == 201
    assert_sandboxed(await live.safe("GET", "/files/posted/part.html"), "POST part")
    metadata = ("Upload-Metadata", f"filename {b64('tus.svg')},filetype {b64('image/svg+xml')}")
    created = await live.safe(
        "POST", "/uploads/", [*TUS, ("Upload-Length", str(len(body))), metadata, OFFSET], body
    )
    assert created.status == 201, created
    stored = live.view.keys()
    [key] = [k for k in stored if k.endswith("/tus.svg")]
    assert_sandboxed(await live.safe("GET", "/files/" + key), "tus filetype")


async def test_inline_prefixes_and_inert_types_are_served_inline(live: Live) -> None:
    page = b"<html>site</html>"
    for content_type in ("text/html", "image/svg+xml", "application/javascript"):
        await live.put(f"{INLINE}page", page, content_type)
        for answer in await downloads(live, f"{INLINE}page"):
            assert_inline(answer, content_type)
    await live.put(f"{INLINE}deep/index.html", page)
    assert_inline(await live.safe("GET", f"/files/{INLINE}deep/index.html"), "guessed, inline prefix")
    # Only keys under the prefix: look-alikes are attachments.
    for lookalike in ("site-evil/index.html", "Site/index.html", "sites/index.html", "x/site/index.html"):
        await live.put(lookalike, page)
        assert_sandboxed(await live.safe("GET", f"/files/{lookalike}"), lookalike)
    video = bytes(range(256)) * 4
    for number, content_type in enumerate(INERT):
        await live.put(f"inert/{number}", video, content_type)
        for answer in await downloads(live, f"inert/{number}"):
            assert_inline(answer, content_type)
    got = await live.safe("GET", "/files/inert/0")
    assert got.headers["Content-Type"] == "video/mp4" and got.body == video


# -- a storage service that cannot be reached --------------------------------------------------------------


@pytest.mark.parametrize("backend", ["s3"], indirect=True)
@pytest.mark.parametrize("where", ["closed port", "missing bucket"])
async def test_unreachable_storage_names_nothing(backend: Backend, start_live: StartLive, where: str) -> None:
    config = backend.config
    s3 = config.storage.s3
    bucket = f"secret-bucket-{uuid.uuid4().hex[:10]}"
    port = free_port()
    if where == "closed port":
        s3 = replace(s3, endpoint_url=f"http://127.0.0.1:{port}", bucket=bucket, max_attempts=1)
    else:
        s3 = replace(s3, bucket=bucket, max_attempts=1)
    broken = await start_live(config=replace(config, storage=replace(config.storage, s3=s3)))
    assert bucket.encode() in broken.forbidden
    if where == "closed port":
        assert f"127.0.0.1:{port}".encode() in broken.forbidden
    form = multipart([form_part("file", b"posted", "posted.txt", "text/plain")])
    upload = "/uploads/" + "0" * 32
    requests: list[tuple[str, str, list[Header], bytes | None]] = [
        ("PUT", "/files/a.txt", [], b"data"),
        ("PUT", "/files/chunked.txt", [("Transfer-Encoding", "chunked")], b"4\r\ndata\r\n0\r\n\r\n"),
        ("POST", "/files/in/", [form_type()], form),
        ("GET", "/files", [], None),
        ("POST", "/uploads/", [*TUS, ("Upload-Length", "5")], None),
        ("PATCH", upload, [*TUS, OFFSET, ("Upload-Offset", "0")], b"data"),
    ]
    if where == "closed port":  # a missing object in a missing bucket is just missing
        requests += [
            ("GET", "/files/a.txt", [], None),
            ("HEAD", "/files/a.txt", [], None),
            ("GET", "/files/a.txt", [("Range", "bytes=0-1")], None),
            ("DELETE", "/files/a.txt", [], None),
            ("HEAD", upload, list(TUS), None),
            ("DELETE", upload, list(TUS), None),
        ]
    for method, target, headers, body in requests:
        answer = await broken.safe(method, target, headers, body, allow_5xx=[502])
        expect_error(answer, 502, None if method == "HEAD" else "upstream_error", (method, target))
        if answer.body:
            assert answer.json()["message"] == "the storage service failed"


# -- HEAD with Range ---------------------------------------------------------------------------------------


def comparable(answer: Answer) -> tuple[object, ...]:
    content_type = answer.headers.get("Content-Type", "")
    if content_type.startswith("multipart/byteranges"):
        content_type = "multipart/byteranges"  # each answer has a boundary of its own
    return (
        answer.status,
        answer.headers.get("Content-Range"),
        answer.headers.get("Content-Length"),
        content_type,
        answer.headers.get("Accept-Ranges"),
        answer.headers.get("ETag"),
        answer.headers.get("Content-Disposition"),
    )


async def test_head_with_range_mirrors_get(live: Live) -> None:
    data = bytes(range(256)) * 4
    put = await live.put("v.mp4", data, "video/mp4")
    etag = put.json()["etag"]
    contents = {"v.mp4": data, "empty.mp4": b"", "page.html": b"<p>hi</p>"}
    await live.put("empty.mp4", b"", "video/mp4")
    await live.put("page.html", contents["page.html"], "text/html")
    cases: list[tuple[str, list[Header]]] = [
        ("v.mp4", [("Range", r)])
        for r in (
            "bytes=0-9",
            "bytes=-10",
            "bytes=1000-",
            "bytes=5000-",
            "bytes=-0",
            "bytes=0-1,5-6,9-9",
            "bytes=0-1023,0-1023",
            "bytes=garbage",
            "bytes=" + ",".join(f"{i}-{i}" for i in range(17)),
        )
    ]
    cases += [
        ("v.mp4", [("Range", "bytes=0-9"), ("If-Range", etag)]),
        ("v.mp4", [("Range", "bytes=0-9"), ("If-Range", '"other"')]),
        ("v.mp4", [("Range", "bytes=0-9"), ("If-Range", f"W/{etag}")]),
        ("v.mp4", [("Range", "bytes=0-9"), ("If-None-Match", etag)]),
        ("v.mp4", [("Range", "bytes=0-9"), ("If-Match", '"other"')]),
        ("empty.mp4", [("Range", "bytes=0-0")]),
        ("empty.mp4", [("Range", "bytes=-1")]),
        ("page.html", [("Range", "bytes=0-2")]),
    ]
    for key, headers in cases:
        get = await live.safe("GET", f"/files/{key}", headers)
        head = await live.safe("HEAD", f"/files/{key}", headers)
        assert comparable(head) == comparable(get), (key, headers, head, get)
        assert get.status in (200, 206, 304, 412, 416), (key, headers, get)
        if get.status not in (304,):
            assert int(get.headers["Content-Length"]) == len(get.body), (key, headers, get)
        assert head.body == b"" and head.extra == b""
        if get.status == 206 and "Content-Range" in get.headers:
            span = get.headers["Content-Range"].split(" ")[1].split("/")[0]
            first, last = (int(n) for n in span.split("-"))
            assert get.body == contents[key][first : last + 1]
        if get.status == 416:
            assert get.headers["Content-Range"] == f"bytes */{len(contents[key])}"
