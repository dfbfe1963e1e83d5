"""Path tricks: no request reaches a file outside the storage root or the proxy's own
files, whatever the encoding, and none leaves anything behind.

Every target is sent byte for byte over a raw socket, so what the server parses is
exactly what an attacker would send. A trick is either refused (400 ``invalid_key``)
or, once decoded, an ordinary name that stays a name: stored under exactly that key,
inside the root, and nowhere else.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import quote

import pytest

from proxy.rules.keys import is_valid_key, validate_list_prefix
from tests.adversarial.conftest import (
    TUS,
    Live,
    b64,
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
local = pytest.mark.parametrize("backend", ["local"], indirect=True)

# Targets after /files/ that must be refused whatever the method.
REFUSED = {
    "dot-dot": b"../x",
    "deep dot-dot": b"a/../../../../etc/passwd",
    "lone dot-dot": b"..",
    "dot segment": b"a/./b",
    "empty segment": b"a//b",
    "trailing slash": b"a/",
    "encoded dot-dot": b"%2e%2e/x",
    "encoded upper": b"%2E%2E/%2E%2E/secret.txt",
    "encoded slash": b"..%2f..%2f..%2fetc%2fpasswd",
    "all encoded": b"%2e%2e%2f%2e%2e%2foutside%2fsecret.txt",
    "leading slash": b"%2fetc%2fpasswd",
    "backslash encoded": b"a%5c..%5c..%5csecret.txt",
    "backslash raw": b"..\\..\\secret.txt",
    "NUL": b"x%00.txt",
    "NUL alone": b"%00",
    "CR LF": b"a%0d%0aSet-Cookie:%20x",
    "tab": b"a%09b",
    "DEL": b"a%7fb",
    "C1 control NEL": b"a%c2%85b",
    "reserved": b".stream-proxy/tmp/x",
    "reserved alone": b".stream-proxy",
    "reserved encoded dot": b"%2estream-proxy/meta/x",
    "reserved encoded all": b"%2Estream-proxy%2Fuploads%2Fx",
    "reserved with dot-dot": b"a/..%2f.stream-proxy/tmp/x",
}

# Targets that decode to an ordinary, valid key: stored under exactly that key.
LITERAL = {
    "double encoded dot-dot": (b"%252e%252e/x", "%2e%2e/x"),
    "double encoded slash": (b"..%252f..%252fx", "..%2f..%2fx"),
    "overlong UTF-8 dot": (b"%c0%ae%c0%ae/x", "%c0%ae%c0%ae/x"),
    "fullwidth dots": (b"%ef%bc%8e%ef%bc%8e/x", "\uff0e\uff0e/x"),
    "one-dot leader": (b"%e2%80%a4%e2%80%a4/x", "\u2024\u2024/x"),
    "three dots": (b".../x", ".../x"),
    "encoded slash inside a name": (b"a%2fb", "a/b"),
    "reserved in another case": (b".Stream-Proxy/tmp/x", ".Stream-Proxy/tmp/x"),
    "reserved, not first": (b"x/.stream-proxyz/y", "x/.stream-proxyz/y"),
    "reserved lookalike": (b"%ef%bc%8estream-proxy/tmp/x", "\uff0estream-proxy/tmp/x"),
}


async def test_refused_keys_touch_nothing(live: Live) -> None:
    await live.put("victim.txt", b"victim")
    for case, target in REFUSED.items():
        for method, body in (("PUT", b"evil"), ("GET", None), ("HEAD", None), ("DELETE", None)):
            answer = await live.safe(method, b"/files/" + target, body=body)
            if method == "DELETE" and target == b"a/":
                # A valid folder, so a folder delete: of nothing (tests/web/test_delete_folder.py).
                assert (answer.status, answer.json()) == (200, {"deleted": 0, "prefix": "a/"}), case
                continue
            expect_error(answer, 400, "invalid_key" if method != "HEAD" else None, (case, method))
    assert live.view.keys() == ["victim.txt"]
    assert live.view.get("victim.txt") == b"victim"
    assert live.view.leftovers() == []
    live.assert_outside_intact()


async def test_decoded_tricks_are_plain_names(live: Live) -> None:
    for case, (target, key) in LITERAL.items():
        put = await live.safe("PUT", b"/files/" + target, body=b"plain")
        assert put.status == 201, (case, put)
        assert put.json()["key"] == key, case
        assert live.view.keys() == [key], case
        assert live.view.get(key) == b"plain", case
        if live.root is not None:
            # The stored file is that name under the root, not a path the name spells.
            assert (live.root / key).resolve().is_relative_to(live.root), case
            assert (live.root / key).read_bytes() == b"plain", case
        got = await live.safe("GET", b"/files/" + target)
        assert (got.status, got.body) == (200, b"plain"), (case, got)
        assert (await live.safe("HEAD", b"/files/" + target)).status == 200, case
        assert (await live.safe("DELETE", b"/files/" + target)).status == 204, case
        assert live.view.keys() == [], case
    assert live.view.leftovers() == []


async def test_internal_files_are_out_of_reach(live: Live) -> None:
    """The proxy's own files exist (a tus upload's state, local metadata) and no
    spelling of their keys reaches them."""
    await live.put("real.txt", b"real")
    location = await live.tus_create(10)
    upload_id = location.rsplit("/", 1)[1]
    before = live.view.leftovers()
    assert f"upload {upload_id}" in before
    for target in (
        f".stream-proxy/uploads/{upload_id}/state.json",
        f"%2estream-proxy/uploads/{upload_id}/state.json",
        f".stream-proxy%2fuploads%2f{upload_id}%2fstate.json",
        f"real.txt/..%2f..%2f.stream-proxy/uploads/{upload_id}/state.json",
        f"x/..%2f.stream-proxy/uploads/{upload_id}/data",
    ):
        for method in ("GET", "DELETE", "PUT"):
            answer = await live.safe(method, "/files/" + target, body=b"x" if method == "PUT" else None)
            expect_error(answer, 400, "invalid_key")
    for prefix in (".stream-proxy/", ".stream-proxy/uploads/", "%2estream-proxy%2f"):
        expect_error(await live.safe("GET", f"/files?prefix={prefix}"), 400, "invalid_key")
    for prefix in (".stream-proxy", ".stream-prox", "."):
        listed = await live.safe("GET", f"/files?prefix={prefix}")
        assert listed.status == 200 and listed.json()["objects"] == [], listed
    assert await live.tus_offset(location) == 0
    assert live.view.leftovers() == before
    assert live.view.keys() == ["real.txt"]


# -- listing prefixes and cursors ------------------------------------------------------------------------

BAD_PREFIXES = [
    "../../../../etc/ho",
    "..%2f..%2fetc%2f",
    "//etc",
    "/etc",
    "a/../b",
    "a/./b",
    "a//b",
    "%2e%2e/",
    "a%5cb",
    "a%00",
    "a%0a",
    ".stream-proxy/tmp",
    "x" * 256,
    "a/" * 513,
]


async def test_bad_listing_prefixes_are_refused(live: Live) -> None:
    await live.put("a/b.txt", b"b")
    for cursor in (None, "../../../../etc/passwd", "//etc", "a"):
        for prefix in BAD_PREFIXES:
            query = f"prefix={prefix}" + (f"&cursor={cursor}" if cursor is not None else "")
            answer = await live.safe("GET", f"/files?{query}&limit=5")
            expect_error(answer, 400, "invalid_key", (prefix, cursor))


ODD_PREFIXES = [
    "..",
    ".",
    "a/..",
    "a/.",
    "..a",
    "a/.stream-proxy",
    ".Stream-Proxy/",
    "\uff0e\uff0e",
    "a/\u2024",
]


async def test_odd_but_valid_prefixes_list_only_objects(live: Live) -> None:
    for key in ("a/b.txt", "a/..b", "..a", ".Stream-Proxy/x", "a/\u2024\u2024"):
        await live.put(quote(key), b"x")
    for prefix in ODD_PREFIXES:
        validate_list_prefix(prefix)
        answer = await live.safe("GET", f"/files?prefix={quote(prefix, safe='')}")
        assert answer.status == 200, (prefix, answer)
        keys = [o["key"] for o in answer.json()["objects"]]
        stored = live.view.keys()
        assert keys == sorted(k for k in stored if k.startswith(prefix)), prefix


async def test_any_cursor_gives_a_page_of_real_objects(live: Live) -> None:
    for key in ("a", "b/c", "z"):
        await live.put(key, b"x")
    # A cursor is only compared with keys: any text a key could be is taken.
    for cursor in ("../../../../etc/passwd", "%2e%2e", "//", "a" * 1024, "b/", "\u00e9", "a\\b"):
        answer = await live.safe("GET", f"/files?cursor={quote(cursor, safe='')}&limit=2")
        assert answer.status == 200, (cursor, answer)
        keys = [o["key"] for o in answer.json()["objects"]]
        assert keys == sorted(k for k in ("a", "b/c", "z") if k > cursor)[:2], cursor
    # Longer than any key, or with characters no S3 server takes: refused.
    for cursor in ("a" * 1025, "\x00", "\uffff"):
        answer = await live.safe("GET", f"/files?cursor={quote(cursor, safe='')}&limit=2")
        assert answer.status == 400, (cursor, answer)
        assert answer.json()["error"] == "invalid_key"


ODD_CURSORS = ["\x00", "\x01", "\uffff", "a\\b"]


@local
async def test_odd_cursors_locally(live: Live) -> None:
    await live.put("a", b"x")
    for cursor in ODD_CURSORS:
        answer = await live.safe("GET", f"/files?cursor={quote(cursor, safe='')}")
        assert answer.status in (200, 400), (cursor, answer)


@pytest.mark.parametrize("backend", ["s3"], indirect=True)
async def test_odd_cursors_on_s3(live: Live) -> None:
    await live.put("a", b"x")
    for cursor in ODD_CURSORS:
        answer = await live.safe("GET", f"/files?cursor={quote(cursor, safe='')}")
        assert answer.status in (200, 400), (cursor, answer)


# -- symlinks planted under the local root -------------------------------------------------------------


def plant_links(live: Live) -> dict[str, Path]:
    """Links under the root to the outside secret file and directory, into the proxy's
    own directory, to themselves and to nothing; and a FIFO. Returns name -> target."""
    root = live.root
    assert root is not None
    links = {
        "file-link": live.secret,
        "dir-link": live.outside / "dir",
        "internal-link": root / ".stream-proxy",
        "meta-link": root / ".stream-proxy" / "meta",
        "loop-link": root / "loop-link",
        "dangling-link": live.outside / "missing",
        "relative-link": Path("../outside/secret.txt"),
    }
    root.mkdir(parents=True, exist_ok=True)
    for name, target in links.items():
        os.symlink(target, root / name)
    os.mkfifo(root / "fifo")
    return links


LINKED_KEYS = [
    "file-link",
    "relative-link",
    "dir-link/secret.txt",
    "internal-link/tmp",
    "loop-link",
    "dangling-link",
    "fifo",
]


@local
async def test_links_out_of_the_root_are_not_objects(live: Live) -> None:
    await live.put("real.txt", b"real")
    links = plant_links(live)
    root = live.root
    assert root is not None
    meta = next((root / ".stream-proxy" / "meta").rglob("*.json"))
    internal = [
        f"meta-link/{meta.parent.name}/{meta.name}",
        f"internal-link/meta/{meta.parent.name}/{meta.name}",
    ]
    for key in LINKED_KEYS + internal:
        for method in ("GET", "HEAD", "DELETE"):
            answer = await live.safe(method, f"/files/{key}", wait=5)
            expect_error(answer, 404, None if method == "HEAD" else "not_found")
        ranged = await live.safe("GET", f"/files/{key}", [("Range", "bytes=0-5")])
        expect_error(ranged, 404, "not_found")
    for name, target in links.items():
        assert (root / name).is_symlink() and os.readlink(root / name) == str(target)
    assert live.secret.read_text() == live.marker
    assert meta.exists()
    listed = await live.safe("GET", "/files")
    assert [o["key"] for o in listed.json()["objects"]] == ["real.txt"]
    for prefix in ("dir-link/", "internal-link/", "meta-link/", "file-link", "dir-link/sec"):
        answer = await live.safe("GET", f"/files?prefix={prefix}")
        assert answer.status == 200 and answer.json() == {"objects": [], "next_cursor": None}, answer


@local
async def test_writes_through_links_stay_inside(live: Live) -> None:
    plant_links(live)
    root = live.root
    assert root is not None
    for key in ("dir-link/new.txt", "dir-link/secret.txt"):
        expect_error(await live.safe("PUT", f"/files/{key}", body=b"evil"), 400, "invalid_key", key)
    body = multipart([form_part("file", b"evil", "new.txt", "text/plain")])
    answer = await live.safe("POST", "/files/dir-link/", [form_type()], body)
    assert expect_error(answer, 400, "invalid_key").json()["stored"] == []
    assert sorted(os.listdir(live.outside / "dir")) == ["secret.txt"]
    assert live.view.leftovers() == []
    # A PUT onto the link itself replaces the link, never its target.
    put = await live.safe("PUT", "/files/file-link", body=b"replaced")
    assert put.status == 201, put
    assert not (root / "file-link").is_symlink()
    assert (root / "file-link").read_bytes() == b"replaced"
    assert live.secret.read_text() == live.marker
    assert (await live.safe("GET", "/files/file-link")).body == b"replaced"
    live.assert_outside_intact()


@local
@pytest.mark.parametrize("method", ["PUT", "POST"])
async def test_writes_through_links_create_no_directory_outside(live: Live, method: str) -> None:
    plant_links(live)
    if method == "PUT":
        answer = await live.safe("PUT", "/files/dir-link/sub/deeper/new.txt", body=b"evil")
    else:
        body = multipart([form_part("file", b"evil", "new.txt", "text/plain")])
        answer = await live.safe("POST", "/files/dir-link/sub/deeper/", [form_type()], body)
    expect_error(answer, 400, "invalid_key")
    assert sorted(os.listdir(live.outside / "dir")) == ["secret.txt"]
    live.assert_outside_intact()


@local
async def test_writes_through_links_never_reach_internal_files(live: Live) -> None:
    location = await live.tus_create(10)
    upload_id = location.rsplit("/", 1)[1]
    plant_links(live)
    assert live.root is not None
    state = live.root / ".stream-proxy" / "uploads" / upload_id / "state.json"
    before = state.read_bytes()
    for key in (
        f"internal-link/uploads/{upload_id}/state.json",
        "internal-link/tmp/x",
        "meta-link/00/x.json",
    ):
        answer = await live.safe("PUT", f"/files/{key}", body=b'{"forged": true}')
        assert answer.status in (400, 404), (key, answer)
    assert state.read_bytes() == before
    assert await live.tus_offset(location) == 0


async def _page_through(live: Live, prefix: str) -> tuple[list[str], list[str]]:
    """Every key listed, page by page with limit=1, and every cursor given."""
    keys: list[str] = []
    cursors: list[str] = []
    cursor = ""
    for _ in range(50):
        answer = await live.safe("GET", f"/files?prefix={prefix}&limit=1&cursor={cursor}")
        assert answer.status == 200, answer
        page = answer.json()
        keys += [o["key"] for o in page["objects"]]
        if page["next_cursor"] is None:
            return keys, cursors
        cursors.append(page["next_cursor"])
        assert page["objects"] and page["next_cursor"] == page["objects"][-1]["key"], (
            f"a page with next_cursor {page['next_cursor']!r} lists {page['objects']!r}"
        )
        cursor = page["next_cursor"]
    raise AssertionError("the listing does not end")


@local
async def test_paging_never_names_links(live: Live) -> None:
    await live.put("zz.txt", b"z")
    plant_links(live)
    keys, cursors = await _page_through(live, "")
    assert keys == ["zz.txt"]
    assert cursors == []


@local
async def test_paging_never_names_internal_files(live: Live) -> None:
    for key in ("a", "b", "c"):
        await live.put(key, b"x")
    plant_links(live)
    keys, cursors = await _page_through(live, "internal-link/")
    assert (keys, cursors) == ([], [])


# -- lengths ------------------------------------------------------------------------------------------


SIZES = {
    "segment 255": ("s" * 255, True),
    "segment 256": ("s" * 256, False),
    "UTF-8 segment 255 bytes": ("\u20ac" * 85, True),
    "UTF-8 segment 258 bytes": ("\u20ac" * 86, False),
    "key 1024": ("/".join(["k" * 200] * 5) + "/" + "k" * 19, True),
    "key 1025": ("/".join(["k" * 200] * 5) + "/" + "k" * 20, False),
    "UTF-8 key 1026 bytes": ("/".join(["\u00e9" * 100] * 5) + "/" + "k" * 21, False),
}


async def test_length_limits(live: Live) -> None:
    for case, (key, valid) in SIZES.items():
        assert is_valid_key(key) is valid, case
        target = "/files/" + quote(key)
        put = await live.safe("PUT", target, body=b"sized")
        if not valid:
            expect_error(put, 400, "invalid_key", case)
            expect_error(await live.safe("GET", target), 400, "invalid_key", case)
            expect_error(await live.safe("DELETE", target), 400, "invalid_key", case)
        else:
            assert put.status == 201 and put.json()["key"] == key, (case, put)
            assert (await live.safe("GET", target)).body == b"sized", case
            assert (await live.safe("DELETE", target)).status == 204, case
        assert live.view.keys() == [], case
    assert live.view.leftovers() == []


MULTIPART_NAMES = [
    ("f" * 255, "a/", True),
    ("f" * 256, "b/", False),
    ("\u00e9" * 128, "c/", False),  # 256 bytes
    ("f" * 200, "/".join(["p" * 200] * 5) + "/", False),  # 1005 + 200 bytes
    ("../../" + "f" * 256, "d/", False),
]


async def test_multipart_filename_lengths(live: Live) -> None:
    kept: list[str] = []
    for filename, prefix, ok in MULTIPART_NAMES:
        case = (len(filename), len(prefix))
        body = multipart(
            [
                form_part("first", b"a", "first.txt", "text/plain"),
                form_part("file", b"data", filename, "text/plain"),
            ]
        )
        answer = await live.safe("POST", f"/files/{prefix}", [form_type()], body)
        kept.append(prefix + "first.txt")
        if ok:
            assert answer.status == 201, (case, answer)
            kept.append(prefix + filename)
            assert [f["key"] for f in answer.json()["files"]] == kept[-2:], case
        else:
            expect_error(answer, 400, "invalid_key", case)
            # Files before the failing one are complete and stay; the answer says which.
            assert answer.json()["stored"] == [prefix + "first.txt"], case
        assert live.view.keys() == sorted(kept), case
    assert live.view.leftovers() == []


TUS_NAMES = [
    ("f" * 255, 201),
    ("f" * 256, 400),
    ("\u00e9" * 200, 400),
    ("../../../../" + "f" * 300, 400),
    ("../../outside/secret.txt", 201),
    ("..", 201),
    (".stream-proxy", 201),
]


async def test_tus_filename_lengths(live: Live) -> None:
    for filename, status in TUS_NAMES:
        case = filename[:20], len(filename)
        before_keys, before_left = live.view.keys(), live.view.leftovers()
        metadata = ("Upload-Metadata", f"filename {b64(filename)}")
        answer = await live.safe("POST", "/uploads/", [*TUS, ("Upload-Length", "0"), metadata])
        assert answer.status == status, (case, answer)
        if status == 400:
            assert answer.error == "invalid_key", case
            assert live.view.leftovers() == before_left and live.view.keys() == before_keys, case
            continue
        # An empty upload is complete at once: its key is the id and a safe name.
        upload_id = answer.headers["Location"].rsplit("/", 1)[1]
        [key] = sorted(set(live.view.keys()) - set(before_keys))
        name = key.split("/", 1)[1]
        assert key.startswith(upload_id + "/") and "/" not in name and name not in ("", ".", ".."), case
        assert name in (filename.rsplit("/", 1)[-1], upload_id), case
        got = await live.safe("GET", f"/files/{quote(key)}")
        assert got.status == 200 and got.body == b"", (case, got)


REDUCED = [
    ("../../../outside/secret.txt", "secret.txt"),
    ("..\\..\\..\\outside\\secret.txt", "secret.txt"),
    ("%2e%2e%2f%2e%2e%2fsecret.txt", "secret.txt"),
    ("C:\\Windows\\..\\x.txt", "x.txt"),
    ("a%7fb.txt", "ab.txt"),
    ("%00x.txt", "x.txt"),
    ("..%5c..%5cy.txt", "y.txt"),
]


async def test_multipart_filenames_reduced_to_one_name(live: Live) -> None:
    for number, (filename, name) in enumerate(REDUCED):
        body = multipart([form_part("file", b"data", filename, "text/plain")])
        answer = await live.safe("POST", f"/files/in{number}/", [form_type()], body)
        assert answer.status == 201, (filename, answer)
        assert [f["key"] for f in answer.json()["files"]] == [f"in{number}/{name}"], filename
    assert live.view.keys() == sorted(f"in{n}/{name}" for n, (_, name) in enumerate(REDUCED))
    live.assert_outside_intact()


NAMELESS = ["..", ".", "", "%2e%2e", "a/..", "..\\", "%2e", "%01%02", " .. ", "%0d%0a", "x/"]


async def test_bad_multipart_names_and_prefixes_are_refused(live: Live) -> None:
    for filename in NAMELESS:
        body = multipart([form_part("file", b"data", filename, "text/plain")])
        answer = await live.safe("POST", "/files/in/", [form_type()], body)
        expect_error(answer, 400, "invalid_key", filename)
        assert answer.json()["stored"] == [], filename
    for raw in (b"a\x01b", b"\x00", b"a\rb"):  # control bytes in the part's header itself
        body = multipart([form_part("file", b"data", raw, "text/plain")])
        answer = expect_error(await live.safe("POST", "/files/in/", [form_type()], body), 400, None, raw)
        assert answer.error in ("bad_multipart", "invalid_key"), (raw, answer)
    for prefix in ("%2e%2e/", "../", "a/../", ".stream-proxy/", "%2estream-proxy/", "a%5cb/", "a%00/", "a//"):
        body = multipart([form_part("file", b"data", "x.txt", "text/plain")])
        answer = await live.safe("POST", f"/files/{prefix}", [form_type()], body)
        expect_error(answer, 400, "invalid_key", prefix)
    assert live.view.keys() == [] and live.view.leftovers() == []


async def test_upload_ids_are_not_paths(live: Live) -> None:
    for upload_id in ("..%2f..%2fetc", "%2e%2e", "../" + "0" * 32, "0" * 31 + "G", "0" * 33, "%00"):
        for method, headers in (("HEAD", TUS), ("DELETE", TUS), ("PATCH", (*TUS, ("Upload-Offset", "0")))):
            extra = [("Content-Type", "application/offset+octet-stream")] if method == "PATCH" else []
            body = b"x" if extra else None
            answer = await live.safe(method, f"/uploads/{upload_id}", [*headers, *extra], body)
            assert answer.status in (400, 404, 405), (upload_id, method, answer)
    assert live.view.leftovers() == []
    live.assert_outside_intact()
