"""tus 1.0.0 header rules (proxy/rules/tus.py): parsing, formatting, object keys.

Spec: https://tus.io/protocols/resumable-upload (core protocol and the creation and
checksum extensions).
"""

from __future__ import annotations

import base64
import hashlib
import unicodedata
from collections.abc import Callable

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from proxy.rules.keys import INTERNAL_PREFIX, MAX_KEY_BYTES, InvalidKey, validate_key
from proxy.rules.tus import (
    CHECKSUM_ALGORITHMS,
    EXTENSIONS,
    SUPPORTED_VERSIONS,
    TUS_VERSION,
    Checksum,
    TusHeaderError,
    metadata_text,
    object_key_for,
    parse_checksum,
    parse_defer_length,
    parse_metadata,
    parse_uint,
    upload_location,
    validate_key_template,
)

UPLOAD_ID = "0123456789abcdef0123456789abcdef"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def test_protocol_constants() -> None:
    assert TUS_VERSION == "1.0.0"
    assert TUS_VERSION in SUPPORTED_VERSIONS
    # The issue asks for these extensions; the spec requires sha1 for the checksum one.
    for name in ("creation", "creation-with-upload", "creation-defer-length", "termination", "expiration"):
        assert name in EXTENSIONS
    assert "checksum" in EXTENSIONS
    assert "sha1" in CHECKSUM_ALGORITHMS
    assert issubclass(TusHeaderError, ValueError)


# --- parse_uint ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("0", 0),
        ("1", 1),
        ("42", 42),
        ("007", 7),
        ("5242883", 5 * 1024 * 1024 + 3),
        ("9" * 19, 10**19 - 1),
        ("0" * 19, 0),
        # Surrounding whitespace is not part of an HTTP field value.
        (" 12 ", 12),
        ("\t12", 12),
    ],
)
def test_parse_uint_accepts_plain_decimal(text: str, value: int) -> None:
    assert parse_uint(text, "Upload-Offset") == value


def test_parse_uint_absent_is_none() -> None:
    assert parse_uint(None, "Upload-Length") is None


@pytest.mark.parametrize(
    "text",
    [
        "",
        " ",
        "-1",
        "+1",
        "-0",
        "1 2",
        "1\t2",
        "1_000",
        "1,000",
        "1.0",
        "1e3",
        "0x10",
        "abc",
        "12a",
        "٣",  # ARABIC-INDIC DIGIT THREE: int() takes it, the header must not
        "\uff11\uff12",  # FULLWIDTH DIGIT ONE, TWO
        "²",
        "1٣",
        "1" * 20,
        "0" * 20,
        "∞",
    ],
)
def test_parse_uint_refuses_anything_but_ascii_digits(text: str) -> None:
    with pytest.raises(TusHeaderError, match="Upload-Offset"):
        parse_uint(text, "Upload-Offset")


def test_parse_uint_names_the_header_and_value() -> None:
    with pytest.raises(TusHeaderError) as info:
        parse_uint("-5", "Upload-Length")
    assert "Upload-Length" in str(info.value)
    assert "'-5'" in str(info.value)


@given(st.integers(min_value=0, max_value=10**19 - 1))
def test_parse_uint_round_trips_every_value_up_to_19_digits(value: int) -> None:
    assert parse_uint(str(value), "Upload-Length") == value


@given(st.text(max_size=25))
@example("٣")
@example("1_0")
def test_parse_uint_accepts_exactly_ascii_digit_strings(text: str) -> None:
    stripped = text.strip()
    ok = stripped != "" and len(stripped) <= 19 and all(ch in "0123456789" for ch in stripped)
    if ok:
        assert parse_uint(text, "Upload-Offset") == int(stripped)
    else:
        with pytest.raises(TusHeaderError):
            parse_uint(text, "Upload-Offset")


# --- parse_defer_length --------------------------------------------------------------------------


def test_parse_defer_length() -> None:
    assert parse_defer_length(None) is False
    assert parse_defer_length("1") is True
    assert parse_defer_length(" 1 ") is True


@pytest.mark.parametrize("text", ["", "0", "2", "true", "yes", "01", "1 1", "-1", "+1", "٣"])
def test_parse_defer_length_refuses_anything_but_1(text: str) -> None:
    with pytest.raises(TusHeaderError, match="Upload-Defer-Length"):
        parse_defer_length(text)


# --- parse_metadata / format_metadata ------------------------------------------------------------


def test_metadata_spec_example() -> None:
    header = "filename d29ybGRfZG9taW5hdGlvbl9wbGFuLnBkZg==,is_confidential"
    assert parse_metadata(header) == {"filename": b"world_domination_plan.pdf", "is_confidential": None}


@pytest.mark.parametrize("header", [None, "", " ", "\t"])
def test_absent_or_blank_metadata_is_empty(header: str | None) -> None:
    assert parse_metadata(header) == {}


def test_metadata_keeps_order_and_tolerates_space_around_pairs() -> None:
    header = f" b {b64(b'2')} , a {b64(b'1')},c "
    parsed = parse_metadata(header)
    assert parsed == {"b": b"2", "a": b"1", "c": None}
    assert list(parsed) == ["b", "a", "c"]


def test_metadata_values_are_binary() -> None:
    raw = bytes(range(256))
    assert parse_metadata(f"blob {b64(raw)}") == {"blob": raw}


def test_metadata_value_may_be_empty_base64() -> None:
    # "key " (space, empty value) and "key" (space left out) both mean an empty value.
    assert metadata_text(parse_metadata("filename ,x"), "filename") is None
    assert metadata_text(parse_metadata("filename"), "filename") is None


def test_metadata_keys_are_case_sensitive() -> None:
    assert parse_metadata(f"Name {b64(b'a')},name {b64(b'b')}") == {"Name": b"a", "name": b"b"}


@pytest.mark.parametrize(
    "header",
    [
        "filename a b",  # three fields
        "filename  d29ybGQ=",  # two spaces: an empty middle field
        ",",
        "a,",
        ",a",
        "a,,b",
        "a\td29ybGQ=",  # a tab is not the separator, and no key may contain one
        "a\u00a0d29ybGQ=",  # nor a no-break space
    ],
)
def test_malformed_metadata_pairs_are_refused(header: str) -> None:
    with pytest.raises(TusHeaderError, match="malformed pair"):
        parse_metadata(header)


@pytest.mark.parametrize(
    "header",
    ["a,a", f"a {b64(b'x')},a {b64(b'y')}", f"k,j,k {b64(b'z')}"],
)
def test_repeated_metadata_keys_are_refused(header: str) -> None:
    with pytest.raises(TusHeaderError, match="repeats"):
        parse_metadata(header)


@pytest.mark.parametrize(
    "value",
    [
        "d29ybGQ",  # padding missing
        "d29ybGQ=x",
        "!!!!",
        "d29y*GQ=",
        "-_-_",  # URL-safe alphabet is not base64
        "d29ybGQ=" + "=",
        "a",
        "wörld===",
    ],
)
def test_metadata_values_must_be_strict_base64(value: str) -> None:
    with pytest.raises(TusHeaderError, match="base64") as info:
        parse_metadata(f"filename {value}")
    assert "filename" in str(info.value)


def format_metadata(metadata: dict[str, bytes | None]) -> str:
    """What a client sends: the encoder tus clients use, for round trips."""
    return ",".join(
        key if value is None else f"{key} {base64.b64encode(value).decode('ascii')}"
        for key, value in metadata.items()
    )


def test_format_metadata() -> None:
    assert format_metadata({}) == ""
    assert format_metadata({"filename": b"world_domination_plan.pdf", "is_confidential": None}) == (
        "filename d29ybGRfZG9taW5hdGlvbl9wbGFuLnBkZg==,is_confidential"
    )


metadata_keys = st.text(
    st.characters(
        exclude_categories=["Cs"],
        exclude_characters=",",
    ).filter(lambda ch: not ch.isspace()),
    min_size=1,
    max_size=12,
)
metadata_dicts = st.dictionaries(metadata_keys, st.one_of(st.none(), st.binary(max_size=40)), max_size=8)


def tus_equivalent(metadata: dict[str, bytes | None]) -> dict[str, bytes | None]:
    """tus has one way to say "no value": an empty value and a left-out one are the same."""
    return {key: value or None for key, value in metadata.items()}


@given(metadata_dicts)
@example({"filename": b"world_domination_plan.pdf", "is_confidential": None})
@example({"empty": b"", "none": None, "k": b"\x00"})
@example({"ключ": "значение".encode(), "鍵": b"\xff\xfe"})
def test_metadata_round_trip(metadata: dict[str, bytes | None]) -> None:
    header = format_metadata(metadata)
    parsed = parse_metadata(header)
    assert list(parsed) == list(metadata)
    assert tus_equivalent(parsed) == tus_equivalent(metadata)
    # Every non-empty value comes back byte for byte.
    for key, value in metadata.items():
        if value:
            assert parsed[key] == value
    # HTTP strips whitespace around a field value; that must not change the meaning.
    assert tus_equivalent(parse_metadata(header.strip())) == tus_equivalent(metadata)
    # Formatting what was parsed gives a header that parses the same again.
    assert parse_metadata(format_metadata(parsed)) == parsed


@given(metadata_dicts, metadata_keys)
def test_metadata_duplicated_key_is_always_refused(metadata: dict[str, bytes | None], key: str) -> None:
    header = format_metadata({**metadata, key: b"x"}) + "," + key
    with pytest.raises(TusHeaderError, match="repeats"):
        parse_metadata(header)


@given(st.text(max_size=40))
def test_parse_metadata_raises_only_tus_header_error(header: str) -> None:
    try:
        parsed = parse_metadata(header)
    except TusHeaderError:
        return
    for key, value in parsed.items():
        assert key and "," not in key and not any(ch.isspace() for ch in key)
        assert value is None or isinstance(value, bytes)


# --- metadata_text --------------------------------------------------------------------------------


def test_metadata_text() -> None:
    metadata: dict[str, bytes | None] = {
        "filename": "réunion 2024.mp4".encode(),
        "filetype": b"video/mp4",
        "flag": None,
        "empty": b"",
        "binary": b"\xff\xfe\x00",
    }
    assert metadata_text(metadata, "filename") == "réunion 2024.mp4"
    assert metadata_text(metadata, "filetype") == "video/mp4"
    assert metadata_text(metadata, "flag") is None
    assert metadata_text(metadata, "empty") is None
    assert metadata_text(metadata, "binary") is None
    assert metadata_text(metadata, "missing") is None
    assert metadata_text({}, "filename") is None


# --- parse_checksum --------------------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ["sha1", "sha256", "md5"])
@pytest.mark.parametrize("spelling", [str.lower, str.upper, str.title])
def test_parse_checksum(algorithm: str, spelling: Callable[[str], str]) -> None:
    digest = hashlib.new(algorithm, b"chunk").digest()
    parsed = parse_checksum(f"{spelling(algorithm)} {b64(digest)}")
    assert parsed == Checksum(algorithm, digest)


def test_parse_checksum_absent_is_none() -> None:
    assert parse_checksum(None) is None


def test_parse_checksum_tolerates_surrounding_whitespace() -> None:
    digest = hashlib.sha1(b"x").digest()
    assert parse_checksum(f"  sha1 {b64(digest)} ") == Checksum("sha1", digest)


@pytest.mark.parametrize("algorithm", ["crc32", "sha512", "sha-1", "sha-256", "md4", "blake2b", "sha"])
def test_parse_checksum_refuses_unknown_algorithms(algorithm: str) -> None:
    with pytest.raises(TusHeaderError, match="not supported") as info:
        parse_checksum(f"{algorithm} {b64(b'0' * 20)}")
    assert repr(algorithm) in str(info.value)
    assert "sha1" in str(info.value)


@pytest.mark.parametrize("digest", ["nop", "AAA", "AA=A", "-_-_", "AAAA!"])
def test_parse_checksum_refuses_bad_base64(digest: str) -> None:
    with pytest.raises(TusHeaderError, match="base64"):
        parse_checksum(f"sha1 {digest}")


@pytest.mark.parametrize(
    "header",
    ["", " ", "sha1", "sha1 ", f"sha1 {b64(b'a')} extra", f"sha1  {b64(b'a')}", f"sha1\t{b64(b'a')}"],
)
def test_parse_checksum_needs_exactly_two_fields(header: str) -> None:
    with pytest.raises(TusHeaderError, match="Upload-Checksum"):
        parse_checksum(header)


@given(st.sampled_from(CHECKSUM_ALGORITHMS), st.binary(min_size=1, max_size=64))
def test_parse_checksum_round_trip(algorithm: str, digest: bytes) -> None:
    if len(digest) == hashlib.new(algorithm).digest_size:
        assert parse_checksum(f"{algorithm} {b64(digest)}") == Checksum(algorithm, digest)
    else:
        # A digest of the wrong length can never match: refused before any byte is read.
        with pytest.raises(TusHeaderError, match="not a"):
            parse_checksum(f"{algorithm} {b64(digest)}")


@given(st.text(max_size=40))
def test_parse_checksum_raises_only_tus_header_error(header: str) -> None:
    try:
        parsed = parse_checksum(header)
    except TusHeaderError:
        return
    assert parsed is not None and parsed.algorithm in CHECKSUM_ALGORITHMS


# --- validate_key_template -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "template",
    ["{id}", "{filename}", "{id}/{filename}", "uploads/{id}/{filename}", "tus/{id}-{filename}", "{id}.bin"],
)
def test_valid_key_templates(template: str) -> None:
    assert validate_key_template(template) == template


@pytest.mark.parametrize(
    ("template", "reason"),
    [
        ("{name}/{id}", "unknown field {name}"),
        ("{id}/{}", "unknown field {}"),
        ("{ID}", "unknown field {ID}"),
        ("{Filename}", "unknown field"),
        ("{id}/{file_name}", "unknown field"),
        ("uploads/file", "must contain {id} or {filename}"),
        ("", "must contain"),
        ("{ id }", "must contain"),
    ],
)
def test_key_templates_with_unknown_or_no_fields(template: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason.replace("{", r"\{").replace("}", r"\}")):
        validate_key_template(template)


@pytest.mark.parametrize(
    "template",
    [
        "/{id}",
        "/uploads/{id}/{filename}",
        "uploads/../{id}",
        "../{id}",
        "{id}/..",
        "{id}/./{filename}",
        "uploads//{id}",
        "{id}/",
        "uploads\\{id}",
        "up\tloads/{id}",
        f"{INTERNAL_PREFIX}/{{id}}",
        f"{INTERNAL_PREFIX}/uploads/{{id}}/{{filename}}",
        "x" * MAX_KEY_BYTES + "{id}",
    ],
)
def test_key_templates_that_cannot_give_valid_keys(template: str) -> None:
    with pytest.raises(InvalidKey):
        validate_key_template(template)


def test_key_template_may_use_the_internal_name_below_the_first_segment() -> None:
    template = f"uploads/{INTERNAL_PREFIX}/{{id}}"
    assert validate_key_template(template) == template


# --- object_key_for ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("filename", "name"),
    [
        ("video.mp4", "video.mp4"),
        ("réunion 2024.mp4", "réunion 2024.mp4"),
        ("...", "..."),
        (".hidden", ".hidden"),
        ("/etc/passwd", "passwd"),
        ("../../etc/passwd", "passwd"),
        ("dir/sub/clip.mov", "clip.mov"),
        ("C:\\Users\\me\\Videos\\clip.mov", "clip.mov"),
        ("..\\..\\boot.ini", "boot.ini"),
        ("mixed/sep\\arated.txt", "arated.txt"),
        ("new\nline.txt", "newline.txt"),
        ("\x00nul\x7f.bin", "nul.bin"),
        ("  padded.txt  ", "padded.txt"),
        ("a:b*c?.txt", "a:b*c?.txt"),
        (INTERNAL_PREFIX, INTERNAL_PREFIX),  # harmless below the id
    ],
)
def test_object_key_uses_the_sanitised_basename(filename: str, name: str) -> None:
    key = object_key_for("{id}/{filename}", UPLOAD_ID, filename)
    assert key == f"{UPLOAD_ID}/{name}"
    assert validate_key(key) == key


@pytest.mark.parametrize(
    "filename",
    [None, "", ".", "..", "/", "dir/", "a/..", "C:\\dir\\", "\x00", "\n\r", "   ", "../.", ".\\.."],
)
def test_object_key_falls_back_to_the_id_without_a_usable_filename(filename: str | None) -> None:
    assert object_key_for("{id}/{filename}", UPLOAD_ID, filename) == f"{UPLOAD_ID}/{UPLOAD_ID}"
    assert object_key_for("files/{filename}", UPLOAD_ID, filename) == f"files/{UPLOAD_ID}"


def test_object_key_template_fields() -> None:
    assert object_key_for("{id}", UPLOAD_ID, "clip.mov") == UPLOAD_ID
    assert object_key_for("{filename}", UPLOAD_ID, "clip.mov") == "clip.mov"
    assert (
        object_key_for("a/{id}/b/{filename}.orig", UPLOAD_ID, "x/clip.mov")
        == f"a/{UPLOAD_ID}/b/clip.mov.orig"
    )
    assert object_key_for("{id}-{id}", UPLOAD_ID, None) == f"{UPLOAD_ID}-{UPLOAD_ID}"


def test_object_key_does_not_expand_fields_inside_the_filename() -> None:
    assert object_key_for("{id}/{filename}", UPLOAD_ID, "{id}.txt") == f"{UPLOAD_ID}/{{id}}.txt"
    assert object_key_for("{filename}", UPLOAD_ID, "{filename}") == "{filename}"


def test_object_key_refuses_a_filename_that_makes_an_invalid_key() -> None:
    # A filename alone as the first segment must not reach the backends' own files.
    with pytest.raises(InvalidKey, match="reserved"):
        object_key_for("{filename}", UPLOAD_ID, INTERNAL_PREFIX)
    with pytest.raises(InvalidKey, match="bytes long"):
        object_key_for("{id}/{filename}", UPLOAD_ID, "x" * MAX_KEY_BYTES)


filenames = st.one_of(
    st.none(),
    st.text(max_size=30),
    st.lists(
        st.one_of(
            st.sampled_from(["", ".", "..", "...", " ", INTERNAL_PREFIX, "\x00", "\n", "C:", "~"]),
            st.text(max_size=8),
        ),
        max_size=5,
    ).flatmap(lambda parts: st.sampled_from(["/", "\\"]).map(lambda sep: sep.join(parts))),
)
templates = st.sampled_from(["{id}/{filename}", "{filename}", "{id}", "up/{filename}", "{filename}/{id}.x"])


@given(templates, filenames)
@example("{filename}", ".stream-proxy")
@example("{filename}", "..")
@example("{filename}", "a/../..")
@example("{filename}", "..\\")
def test_object_key_is_always_a_valid_single_segment_key(template: str, filename: str | None) -> None:
    try:
        key = object_key_for(template, UPLOAD_ID, filename)
    except InvalidKey:
        return
    assert validate_key(key) == key
    assert ".." not in key.split("/")
    assert "\\" not in key
    assert not any(unicodedata.category(ch) == "Cc" for ch in key)
    # The filename contributes exactly one segment: the template's shape is kept.
    assert key.count("/") == template.count("/")
    if "{id}" in template:
        assert UPLOAD_ID in key


# --- upload_location -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("base", "upload_id", "location"),
    [
        ("/uploads/", UPLOAD_ID, f"/uploads/{UPLOAD_ID}"),
        ("/uploads", UPLOAD_ID, f"/uploads/{UPLOAD_ID}"),
        ("/uploads//", "x", "/uploads/x"),
        ("http://proxy.example:8080/uploads/", "abc", "http://proxy.example:8080/uploads/abc"),
        ("/uploads/", "a/b", "/uploads/a%2Fb"),
        ("/uploads/", "a b?#", "/uploads/a%20b%3F%23"),
        ("/uploads/", "..", "/uploads/.."),
    ],
)
def test_upload_location(base: str, upload_id: str, location: str) -> None:
    assert upload_location(base, upload_id) == location


@given(st.text(min_size=1, max_size=20))
def test_upload_location_keeps_the_id_in_one_segment(upload_id: str) -> None:
    location = upload_location("/uploads/", upload_id)
    assert location.startswith("/uploads/")
    assert "/" not in location.removeprefix("/uploads/")
