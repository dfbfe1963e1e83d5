"""Content types stored and served (proxy/rules/content_types.py): media type syntax,
the upload and download rules, and which types would run on the origin."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.rules.content_types import (
    MAX_CONTENT_TYPE_LENGTH,
    InvalidContentType,
    content_type_for,
    essence,
    is_active,
    safety_headers,
    served_content_type,
    validate_media_type,
)


@pytest.mark.parametrize(
    "text",
    [
        "video/mp4",
        "text/plain; charset=utf-8",
        "text/plain;charset=UTF-8",
        'multipart/mixed; boundary="a b:c"',
        "application/vnd.apple.mpegurl",
        "text/plain;",
        "a/b; x=1 ;y=2",
        'a/b; q="quoted \\"escape\\""',
    ],
)
def test_media_types_are_accepted(text: str) -> None:
    assert validate_media_type(text) == text


@pytest.mark.parametrize(
    "text",
    [
        "",
        "video",
        "video/",
        "/mp4",
        "video/mp4/x",
        "text/html\r\nX-Evil: 1",
        "text/html\nX: 1",
        "text/html\x00",
        "vidéo/mp4",
        "video/mp4; name=vidéo",
        "video/mp4; charset",
        'video/mp4; a="unterminated',
        " video/mp4",
        "video /mp4",
        "a/" + "b" * MAX_CONTENT_TYPE_LENGTH,
    ],
)
def test_what_is_no_media_type_is_refused(text: str) -> None:
    with pytest.raises(InvalidContentType):
        validate_media_type(text)


@given(st.text(max_size=80))
def test_an_accepted_type_is_printable_ascii_that_a_header_can_carry(text: str) -> None:
    try:
        validate_media_type(text)
    except InvalidContentType:
        return
    assert text.isascii()
    assert all(ch == "\t" or " " <= ch <= "~" for ch in text)
    assert essence(text) is not None


@pytest.mark.parametrize(
    ("declared", "key", "stored"),
    [
        ("video/mp4", "a.bin", "video/mp4"),
        (None, "a.mp4", "video/mp4"),
        ("application/octet-stream", "a.mp4", "video/mp4"),
        ("application/octet-stream", "a.unknownext", "application/octet-stream"),
        (None, "noext", "application/octet-stream"),
    ],
)
def test_upload_types(declared: str | None, key: str, stored: str) -> None:
    assert content_type_for(declared, key) == stored


def test_an_upload_type_that_is_no_media_type_is_refused() -> None:
    with pytest.raises(InvalidContentType):
        content_type_for("text/html\r\nSet-Cookie: a=b", "a.mp4")


@pytest.mark.parametrize(
    ("stored", "key", "served"),
    [
        ("video/webm", "a.mp4", "video/webm"),
        (None, "a.mp4", "video/mp4"),
        ("text/html\r\nX: 1", "a.mp4", "video/mp4"),  # written by other means: not repeated
        ("vidéo/mp4", "noext", "application/octet-stream"),
    ],
)
def test_served_types(stored: str | None, key: str, served: str) -> None:
    assert served_content_type(stored, key) == served


@pytest.mark.parametrize(
    "content_type",
    [
        "text/html",
        "TEXT/HTML; charset=utf-8",
        "application/xhtml+xml",
        "image/svg+xml",
        "application/xml",
        "text/xml",
        "application/atom+xml",
        "application/javascript",
        "text/javascript",
        "text/ecmascript",
        "multipart/x-mixed-replace; boundary=x",
        "not a type",
        "",
    ],
)
def test_types_that_run_on_the_origin_are_active(content_type: str) -> None:
    assert is_active(content_type)


@pytest.mark.parametrize(
    "content_type",
    [
        "video/mp4",
        "video/webm",
        "audio/mpeg",
        "image/png",
        "image/jpeg",
        "application/json",
        "text/plain",
        "application/octet-stream",
        "text/css",
        "application/vnd.apple.mpegurl",
        "application/pdf",
    ],
)
def test_media_and_data_types_are_not_active(content_type: str) -> None:
    assert not is_active(content_type)


def test_active_downloads_are_sandboxed_attachments_unless_inline() -> None:
    sandboxed = {"Content-Disposition": "attachment", "Content-Security-Policy": "sandbox"}
    assert safety_headers("text/html", "pages/a.html", ()) == sandboxed
    assert safety_headers("text/html", "pages/a.html", ("site/",)) == sandboxed
    assert safety_headers("text/html", "site/a.html", ("site/",)) == {}
    assert safety_headers("text/html", "anything", ("",)) == {}
    assert safety_headers("video/mp4", "pages/a.mp4", ()) == {}
