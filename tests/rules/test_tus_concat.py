"""Upload-Concat (tus concatenation) parsing, and how S3 parts assemble partials."""

from __future__ import annotations

import uuid

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from proxy.rules.tus import EXTENSIONS, MAX_PARTIALS, Concat, TusHeaderError, parse_concat
from proxy.storage.s3.limits import MAX_PARTS, MIN_PART_SIZE
from proxy.storage.s3.resumable.plan import concat_parts

MiB = 1024 * 1024
A, B, C = ("0123456789abcdef" * 2, "f" * 32, "c0ffee" * 5 + "00")


def test_concatenation_is_offered_but_not_its_unfinished_variant() -> None:
    assert "concatenation" in EXTENSIONS
    assert "concatenation-unfinished" not in EXTENSIONS


def test_absent_and_partial() -> None:
    assert parse_concat(None) is None
    assert parse_concat("partial") == Concat()
    assert parse_concat("  partial ") == Concat()
    assert not Concat().final
    assert Concat().header("/uploads") == "partial"


@pytest.mark.parametrize(
    "value",
    [
        f"final;/uploads/{A} /uploads/{B}",
        f"final;http://example.com/uploads/{A} https://h:8080/uploads/{B}/",
        f"final; /s/sig.nature/uploads/{A}   /prefix/uploads/{B}?sig=x  ",
        f"final;uploads/{A}\t/uploads/{B}#frag",
        f" final ;/uploads/{A} /uploads/{B}",
    ],
)
def test_final_names_partials_by_url_or_path(value: str) -> None:
    concat = parse_concat(value)
    assert concat == Concat((A, B))
    assert concat.final
    assert concat.header("/uploads") == f"final;/uploads/{A} /uploads/{B}"
    # What HEAD answers parses back to the same.
    assert parse_concat(concat.header("/uploads")) == concat


def test_order_is_kept() -> None:
    assert parse_concat(f"final;/uploads/{C} /uploads/{A} /uploads/{B}") == Concat((C, A, B))


@pytest.mark.parametrize(
    "value",
    [
        "",
        "Partial",
        "partial;",
        "final",
        "final;",
        "final;   ",
        f"final/uploads/{A}",
        f"finale;/uploads/{A}",
        f"final;/uploads/{A} /uploads/{A}",  # the same partial twice
        f"final;/uploads/{A.upper()}",
        f"final;/uploads/{A[:-1]}",
        f"final;/uploads/{A}0",
        f"final;/files/{A}",
        f"final;/uploads/{A}/x",
        f"final;{A}",
        f"final;/uploads/{A},/uploads/{B}",
        "final;http://[::1/uploads/" + A,  # no URL at all
        "final;" + " ".join(f"/uploads/{uuid.UUID(int=n).hex}" for n in range(MAX_PARTIALS + 1)),
        "final;/uploads/" + A + " " * 70_000,
    ],
)
def test_malformed_headers_are_refused(value: str) -> None:
    with pytest.raises(TusHeaderError):
        parse_concat(value)


def test_the_most_partials_allowed_parse() -> None:
    ids = [uuid.UUID(int=n).hex for n in range(MAX_PARTIALS)]
    assert parse_concat("final;" + " ".join(f"/uploads/{i}" for i in ids)) == Concat(tuple(ids))


@given(st.text(max_size=300))
@example("final;" + "/uploads/" * 50)
@example("final;http://[/uploads/" + A)
def test_garbage_raises_only_tus_header_error(value: str) -> None:
    try:
        concat = parse_concat(value)
    except TusHeaderError:
        return
    assert concat is not None
    assert all(len(i) == 32 for i in concat.partials)


@given(st.lists(st.sampled_from(["/uploads/", "http://h/uploads/", "/s/x/uploads/"]), max_size=5), st.data())
def test_any_list_of_upload_urls_round_trips(prefixes: list[str], data: st.DataObject) -> None:
    ids = [uuid.UUID(int=data.draw(st.integers(0, 2**128 - 1))).hex for _ in prefixes]
    value = "final;" + " ".join(p + i for p, i in zip(prefixes, ids, strict=True))
    if not ids or len(set(ids)) != len(ids):
        with pytest.raises(TusHeaderError):
            parse_concat(value)
        return
    assert parse_concat(value) == Concat(tuple(ids))


# -- S3 parts of a final -----------------------------------------------------------------


def check_parts(sizes: list[int], copy_piece: int) -> None:
    parts = concat_parts(sizes, copy_piece)
    # Every byte of every partial, once, in order.
    covered = [(i, s, e) for part in parts for (i, s, e) in part.ranges]
    expected_cursor = [(i, 0) for i, size in enumerate(sizes) if size]
    at: dict[int, int] = {}
    order: list[int] = []
    for i, start, end in covered:
        assert start == at.get(i, 0) and end > start
        at[i] = end
        if not order or order[-1] != i:
            order.append(i)
    assert at == {i: size for i, size in enumerate(sizes) if size}
    assert order == [i for i, _ in expected_cursor]
    for n, part in enumerate(parts, start=1):
        if n < len(parts):
            assert part.size >= MIN_PART_SIZE  # S3's rule for all but the last part
        if part.copied:
            assert len(part.ranges) == 1 and MIN_PART_SIZE <= part.size <= copy_piece
        else:
            assert part.size < 2 * MIN_PART_SIZE  # never more than this in memory
    # A partial large enough is copied whole by S3 when nothing small comes before it.
    if all(size >= MIN_PART_SIZE for size in sizes):
        assert all(part.copied for part in parts)


@given(
    st.lists(
        st.integers(0, 30 * MiB) | st.sampled_from([0, 1, MIN_PART_SIZE - 1, MIN_PART_SIZE]), max_size=12
    ),
    st.integers(2 * MIN_PART_SIZE, 40 * MiB),
)
def test_parts_cover_the_partials_in_order_and_are_valid(sizes: list[int], copy_piece: int) -> None:
    check_parts(sizes, copy_piece)


def test_large_partials_are_copied_and_small_ones_gathered() -> None:
    parts = concat_parts([6 * MiB, 6 * MiB, 6 * MiB])
    assert [(p.copied, p.ranges) for p in parts] == [(True, ((i, 0, 6 * MiB),)) for i in range(3)]
    # Small ones first: gathered, then topped up from the large one.
    parts = concat_parts([2 * MiB, 2 * MiB, 8 * MiB, 1])
    assert [(p.copied, p.ranges) for p in parts] == [
        (False, ((0, 0, 2 * MiB), (1, 0, 2 * MiB), (2, 0, MiB))),
        (True, ((2, MiB, 8 * MiB),)),
        (False, ((3, 0, 1),)),
    ]
    assert concat_parts([0, 0]) == []


def test_too_many_parts_are_refused() -> None:
    with pytest.raises(ValueError, match="parts"):
        concat_parts([MIN_PART_SIZE] * (MAX_PARTS + 1))
