"""Object key rules (proxy/rules/keys.py): what is accepted, what is refused, and why it is safe."""

from __future__ import annotations

import os
import unicodedata
from pathlib import PurePosixPath

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from proxy.rules.keys import (
    MAX_KEY_BYTES,
    MAX_SEGMENT_BYTES,
    InvalidKey,
    is_valid_list_prefix,
    sanitize_filename,
    validate_key,
    validate_list_prefix,
    validate_prefix,
)

ROOT = PurePosixPath("/srv/stream-proxy/data")


def is_control(ch: str) -> bool:
    return unicodedata.category(ch) == "Cc"


# --- validate_key -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "key",
    [
        "a",
        "video.mp4",
        "dir/sub/file.tar.gz",
        "...",
        ".hidden",
        "a/.b/c..",
        "with space/and-dash_and~tilde",
        "ünïcödé/日本語/файл.mp4",
        "emoji/😀.png",
        "a" * MAX_SEGMENT_BYTES,
        "/".join(["a" * MAX_SEGMENT_BYTES] * 4),
    ],
)
def test_valid_keys_are_returned_unchanged(key: str) -> None:
    assert validate_key(key) == key


@pytest.mark.parametrize(
    ("key", "reason"),
    [
        ("", "empty"),
        ("/abs", "start with '/'"),
        ("/", "start with '/'"),
        ("dir\\file", "backslash"),
        ("\\", "backslash"),
        (".", "'.'"),
        ("..", "'..'"),
        ("a/../b", "'..'"),
        ("../etc/passwd", "'..'"),
        ("a/./b", "'.'"),
        ("a//b", "empty"),
        ("a/", "empty"),
        ("a/b/..", "'..'"),
    ],
)
def test_invalid_keys_are_rejected_with_a_reason(key: str, reason: str) -> None:
    with pytest.raises(InvalidKey, match=reason):
        validate_key(key)


@pytest.mark.parametrize("ch", ["\x00", "\x01", "\t", "\n", "\r", "\x1f", "\x7f", "\x85", "\x9f"])
def test_control_characters_are_rejected(ch: str) -> None:
    assert is_control(ch)
    with pytest.raises(InvalidKey, match=f"U\\+{ord(ch):04X}"):
        validate_key(f"dir/na{ch}me.txt")


def test_lone_surrogate_is_rejected_as_invalid_utf8() -> None:
    with pytest.raises(InvalidKey, match="UTF-8"):
        validate_key("bad\udcffname")


def test_invalid_key_is_a_value_error() -> None:
    assert issubclass(InvalidKey, ValueError)


@pytest.mark.parametrize(
    ("unit", "width"),
    [("a", 1), ("é", 2), ("€", 3), ("😀", 4)],
)
def test_length_limit_counts_utf8_bytes(unit: str, width: int) -> None:
    assert len(unit.encode("utf-8")) == width
    # Segments of 200 bytes (whole units padded with ASCII) and a last one that makes
    # the key exactly MAX_KEY_BYTES bytes long, no segment longer than allowed.

    def segment(size: int) -> str:
        return unit * (size // width) + "a" * (size % width)

    exact = "/".join([segment(200)] * 4 + [segment(MAX_KEY_BYTES - 4 * 201)])
    assert len(exact.encode("utf-8")) == MAX_KEY_BYTES
    assert validate_key(exact) == exact

    over = exact + "a"
    with pytest.raises(InvalidKey, match=f"{MAX_KEY_BYTES + 1} bytes"):
        validate_key(over)


def test_length_limit_is_bytes_not_characters() -> None:
    key = "é" * 513  # 513 characters, 1026 bytes
    assert len(key) < MAX_KEY_BYTES
    with pytest.raises(InvalidKey, match="1026 bytes"):
        validate_key(key)


def test_multibyte_character_straddling_the_limit_is_rejected() -> None:
    key = "a" * (MAX_KEY_BYTES - 1) + "é"  # the last character takes bytes 1024 and 1025
    with pytest.raises(InvalidKey, match="1025 bytes"):
        validate_key(key)


# --- validate_key properties ---------------------------------------------------------------------

segments = st.one_of(
    st.sampled_from([".", "..", "...", ".a", "a.", "..a", "", "\\", " "]),
    st.text(min_size=1, max_size=12),
)
key_like = st.lists(segments, min_size=1, max_size=6).map("/".join)
# Mostly valid keys (tricky dot names included), so that properties of accepted keys get exercised.
safe_chars = st.characters(exclude_categories=["Cc", "Cs"], exclude_characters="/\\")
plausible_segments = st.one_of(
    st.sampled_from(["...", ".a", "a.", "..a", "a..", " ", "~"]), st.text(safe_chars, min_size=1, max_size=12)
)
plausible_keys = st.lists(plausible_segments, min_size=1, max_size=6).map("/".join)


def accepted(key: str) -> bool:
    try:
        validate_key(key)
    except InvalidKey:
        return False
    return True


@given(st.one_of(plausible_keys, key_like))
def test_accepted_keys_stay_inside_the_root(key: str) -> None:
    assume(accepted(key))
    joined = ROOT / key
    normalised = os.path.normpath(joined)
    assert normalised.startswith(str(ROOT) + "/")
    assert PurePosixPath(normalised).is_relative_to(ROOT)
    # Nothing for normpath to collapse: the key names exactly the path it spells.
    assert normalised == f"{ROOT}/{key}"
    assert len(PurePosixPath(normalised).relative_to(ROOT).parts) == key.count("/") + 1


@given(st.text(max_size=40))
def test_accepted_keys_satisfy_every_rule(key: str) -> None:
    if not accepted(key):
        return
    assert key and not key.startswith("/")
    assert "\\" not in key
    assert not any(is_control(ch) for ch in key)
    assert all(segment not in ("", ".", "..") for segment in key.split("/"))
    assert len(key.encode("utf-8")) <= MAX_KEY_BYTES


@given(
    st.lists(plausible_segments, max_size=3),
    st.sampled_from(["", ".", ".."]),
    st.lists(plausible_segments, max_size=3),
)
def test_keys_with_traversal_or_empty_segments_are_always_rejected(
    before: list[str], bad: str, after: list[str]
) -> None:
    key = "/".join([*before, bad, *after])
    with pytest.raises(InvalidKey):
        validate_key(key)


# --- validate_prefix ------------------------------------------------------------------------------


@pytest.mark.parametrize("prefix", ["", "a/", "a/b/", "日本/", "..a/"])
def test_valid_prefixes(prefix: str) -> None:
    assert validate_prefix(prefix) == prefix


@pytest.mark.parametrize(
    ("prefix", "reason"),
    [
        ("a", "end with '/'"),
        ("a/b", "end with '/'"),
        ("/", "empty"),
        ("//", "start with '/'"),
        ("a//", "empty"),
        ("/a/", "start with '/'"),
        ("../", "'..'"),
        ("./", "'.'"),
        ("a\\b/", "backslash"),
        ("a\x00/", "control"),
    ],
)
def test_invalid_prefixes(prefix: str, reason: str) -> None:
    with pytest.raises(InvalidKey, match=reason):
        validate_prefix(prefix)


@given(key_like)
def test_prefix_is_valid_exactly_when_it_is_a_valid_key_plus_slash(key: str) -> None:
    try:
        validate_prefix(key + "/")
    except InvalidKey:
        assert not accepted(key)
    else:
        assert accepted(key)


@pytest.mark.parametrize(("unit", "width"), [("a", 1), ("é", 2), ("€", 3), ("😀", 4)])
def test_segment_limit_counts_utf8_bytes(unit: str, width: int) -> None:
    # The local backend stores every segment as a file name: 255 bytes at most.
    fits = unit * (MAX_SEGMENT_BYTES // width)
    assert validate_key(f"dir/{fits}/x") == f"dir/{fits}/x"
    over = fits + unit * (1 + (MAX_SEGMENT_BYTES - len(fits.encode("utf-8"))) // width)
    assert len(over.encode("utf-8")) > MAX_SEGMENT_BYTES
    for key in (over, f"dir/{over}", f"{over}/x"):
        with pytest.raises(InvalidKey, match="segment is at most"):
            validate_key(key)


# --- validate_list_prefix -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "prefix",
    ["", "a", "a/", "a/b", "vid", "videos/2024/clip", "..a", "a/..", "a/.", ".", "..", "日本/ファ", "a/.hid"],
)
def test_list_prefixes_that_name_a_place_inside(prefix: str) -> None:
    assert validate_list_prefix(prefix) == prefix


@pytest.mark.parametrize(
    ("prefix", "reason"),
    [
        ("../../../../etc/ho", "'..'"),
        ("../", "'..'"),
        ("a/../b", "'..'"),
        ("./a", "'.'"),
        ("//etc", "start with '/'"),
        ("/etc/ho", "start with '/'"),
        ("a//b", "empty"),
        ("a\\..\\b", "backslash"),
        ("a\x00", "control"),
        (".stream-proxy/", "reserved"),
        (".stream-proxy/uploads/", "reserved"),
        ("x" * (MAX_KEY_BYTES + 1), "bytes long"),
        ("x" * (MAX_SEGMENT_BYTES + 1), "segment is at most"),
    ],
)
def test_list_prefixes_that_would_leave_the_storage_are_refused(prefix: str, reason: str) -> None:
    with pytest.raises(InvalidKey, match=reason):
        validate_list_prefix(prefix)


@given(key_like, st.integers(min_value=0, max_value=2000))
def test_every_start_of_a_valid_key_is_a_valid_list_prefix(key: str, cut: int) -> None:
    if not accepted(key):
        return
    assert validate_list_prefix(key[:cut]) == key[:cut]


@given(st.one_of(key_like, st.text(max_size=40)))
def test_is_valid_list_prefix_says_what_validate_list_prefix_does(prefix: str) -> None:
    try:
        validate_list_prefix(prefix)
    except InvalidKey:
        assert not is_valid_list_prefix(prefix)
    else:
        assert is_valid_list_prefix(prefix)


@given(key_like)
def test_a_valid_list_prefix_names_a_folder_inside_the_root(prefix: str) -> None:
    try:
        validate_list_prefix(prefix)
    except InvalidKey:
        return
    # The folder a local listing walks: the prefix's complete segments.
    folder = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
    assert folder == "" or validate_key(folder) == folder
    resolved = ROOT.joinpath(folder)
    assert resolved == ROOT or ROOT in resolved.parents


# --- sanitize_filename ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("filename", "expected"),
    [
        ("video.mp4", "video.mp4"),
        ("C:\\x\\y.mp4", "y.mp4"),
        ("C:\\Users\\me\\My Videos\\clip 1.mov", "clip 1.mov"),
        ("../../etc/passwd", "passwd"),
        ("..\\..\\boot.ini", "boot.ini"),
        ("/abs/path/to/file.txt", "file.txt"),
        ("mixed/sep\\arators/last", "last"),
        ("a\x00b\x1fc\x7fd\x85.txt", "abcd.txt"),
        ("new\nline.txt", "newline.txt"),
        ("  padded.txt  ", "padded.txt"),
        ("...", "..."),
        ("日本語.txt", "日本語.txt"),
    ],
)
def test_sanitize_filename(filename: str, expected: str) -> None:
    assert sanitize_filename(filename) == expected


@pytest.mark.parametrize(
    "filename",
    ["", ".", "..", "dir/", "dir\\", "a/..", "C:\\x\\..", "../.", "   ", "\x00", "\x00.\x1f", " .. ", "\t"],
)
def test_sanitize_filename_rejects_names_with_nothing_usable(filename: str) -> None:
    with pytest.raises(InvalidKey, match="no usable name"):
        sanitize_filename(filename)


def test_sanitize_filename_does_not_truncate_long_names() -> None:
    # The length limit is left to validate_key, which the caller applies to prefix + name.
    name = "x" * (MAX_KEY_BYTES + 10)
    assert sanitize_filename(name) == name
    with pytest.raises(InvalidKey, match="bytes long"):
        validate_key(name)


path_like = st.lists(
    st.one_of(st.sampled_from(["/", "\\", ".", "..", "C:", " ", "\x00", "\x85"]), st.text(max_size=8)),
    max_size=8,
).map("".join)


@given(path_like)
def test_sanitized_names_are_single_safe_segments(filename: str) -> None:
    try:
        name = sanitize_filename(filename)
    except InvalidKey:
        return
    assert "/" not in name
    assert "\\" not in name
    assert not any(is_control(ch) for ch in name)
    assert name not in ("", ".", "..")
    assert name == name.strip()
    assert len(name.encode("utf-8")) <= MAX_KEY_BYTES  # inputs here are short
    assert validate_key(name) == name
    assert validate_key("uploads/" + name) == "uploads/" + name
    # Sanitizing is idempotent.
    assert sanitize_filename(name) == name


@given(st.text(min_size=1, max_size=20).filter(accepted), path_like)
def test_only_the_last_component_survives(last: str, directories: str) -> None:
    assume("/" not in last and last == last.strip())
    assert sanitize_filename(directories + "/" + last) == last
    assert sanitize_filename(directories + "\\" + last) == last
