"""S3 multipart part sizes (proxy/storage/s3/limits.py) against S3's limits."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.storage.s3.limits import (
    MAX_OBJECT_SIZE,
    MAX_PART_SIZE,
    MAX_PARTS,
    MIN_PART_SIZE,
    PARTS_PER_TIER,
    MiB,
    max_size_for_unknown_size,
    part_size_for_known_size,
    part_size_for_unknown_size,
)

GiB = 1024 * MiB
TiB = 1024 * GiB


def parts_needed(total: int, part_size: int) -> int:
    return -(-total // part_size)


def test_s3_limits() -> None:
    assert 5 * MiB == MIN_PART_SIZE
    assert 5 * GiB == MAX_PART_SIZE
    assert 5 * TiB == MAX_OBJECT_SIZE
    assert MAX_PARTS == 10_000


# --- known size ----------------------------------------------------------------------------------

totals = st.one_of(
    st.integers(min_value=0, max_value=MAX_OBJECT_SIZE),
    st.sampled_from(
        [0, 1, 6 * MiB * MAX_PARTS, 6 * MiB * MAX_PARTS + 1, MAX_OBJECT_SIZE - 1, MAX_OBJECT_SIZE]
    ),
)
preferred_sizes = st.one_of(
    st.integers(min_value=MIN_PART_SIZE, max_value=MAX_PART_SIZE),
    st.sampled_from([MIN_PART_SIZE, 6 * MiB, 8 * MiB, 6 * MiB + 1, MAX_PART_SIZE]),
)


@given(totals, preferred_sizes)
def test_known_size_fits_s3_limits(total: int, preferred: int) -> None:
    size = part_size_for_known_size(total, preferred)
    assert size >= preferred
    assert MIN_PART_SIZE <= size <= MAX_PART_SIZE
    assert parts_needed(total, size) <= MAX_PARTS


@given(totals, preferred_sizes)
def test_known_size_grows_only_as_much_as_needed(total: int, preferred: int) -> None:
    size = part_size_for_known_size(total, preferred)
    if size == preferred:
        return
    # It grew: MiB-aligned, and one MiB less would need too many parts.
    assert size % MiB == 0
    assert size > preferred
    assert parts_needed(total, size - MiB) > MAX_PARTS


@given(totals, st.integers(min_value=0, max_value=MIN_PART_SIZE))
def test_small_preferred_is_raised_to_the_minimum(total: int, preferred: int) -> None:
    size = part_size_for_known_size(total, preferred)
    assert MIN_PART_SIZE <= size <= MAX_PART_SIZE
    assert parts_needed(total, size) <= MAX_PARTS


@given(totals, st.integers(min_value=MAX_PART_SIZE, max_value=100 * GiB))
def test_huge_preferred_is_capped_at_the_maximum(total: int, preferred: int) -> None:
    assert part_size_for_known_size(total, preferred) == MAX_PART_SIZE


@pytest.mark.parametrize(
    ("total", "preferred", "expected"),
    [
        (0, 6 * MiB, 6 * MiB),
        (1, 6 * MiB, 6 * MiB),
        (100 * GiB, 6 * MiB, 11 * MiB),  # 100 GiB / 10,000 = 10.24 MiB, rounded up to 11 MiB
        (6 * MiB * MAX_PARTS, 6 * MiB, 6 * MiB),  # exactly 10,000 parts of the preferred size
        (6 * MiB * MAX_PARTS + 1, 6 * MiB, 7 * MiB),
        (MAX_OBJECT_SIZE, 6 * MiB, 525 * MiB),
        (0, 1, MIN_PART_SIZE),
    ],
)
def test_known_size_examples(total: int, preferred: int, expected: int) -> None:
    assert part_size_for_known_size(total, preferred) == expected


@pytest.mark.parametrize("total", [MAX_OBJECT_SIZE + 1, 6 * TiB, 2**63])
def test_known_size_over_5_tib_is_refused(total: int) -> None:
    with pytest.raises(ValueError, match="object limit"):
        part_size_for_known_size(total, 6 * MiB)


# --- unknown size --------------------------------------------------------------------------------

part_numbers = st.integers(min_value=1, max_value=MAX_PARTS)


@given(preferred_sizes, part_numbers, part_numbers)
def test_unknown_size_parts_never_shrink(preferred: int, a: int, b: int) -> None:
    low, high = sorted((a, b))
    assert part_size_for_unknown_size(low, preferred) <= part_size_for_unknown_size(high, preferred)


@given(st.integers(min_value=0, max_value=100 * GiB), part_numbers)
def test_unknown_size_parts_stay_within_s3_limits(preferred: int, part_number: int) -> None:
    assert MIN_PART_SIZE <= part_size_for_unknown_size(part_number, preferred) <= MAX_PART_SIZE


@given(preferred_sizes, st.integers(min_value=1, max_value=PARTS_PER_TIER))
def test_unknown_size_first_tier_uses_the_preferred_size(preferred: int, part_number: int) -> None:
    assert part_size_for_unknown_size(part_number, preferred) == preferred


def test_unknown_size_schedule_for_6_mib() -> None:
    sizes = [part_size_for_unknown_size(n, 6 * MiB) for n in range(1, MAX_PARTS + 1)]
    assert sizes == sorted(sizes)
    assert sizes[0] == sizes[999] == 6 * MiB
    assert sizes[1000] == 12 * MiB  # part 1001 starts the second tier
    assert sizes[-1] == min(6 * MiB << 9, MAX_PART_SIZE)


@pytest.mark.parametrize("part_number", [0, -1, MAX_PARTS + 1])
def test_unknown_size_part_number_out_of_range(part_number: int) -> None:
    with pytest.raises(ValueError, match="part number"):
        part_size_for_unknown_size(part_number, 6 * MiB)


@pytest.mark.parametrize("preferred", [MIN_PART_SIZE, 6 * MiB])
def test_unknown_size_reaches_far_beyond_a_flat_schedule(preferred: int) -> None:
    flat = preferred * MAX_PARTS  # 58.6 GiB for 6 MiB parts
    reach = max_size_for_unknown_size(preferred)
    assert reach > 50 * flat
    assert reach >= 4 * TiB
    assert reach <= MAX_OBJECT_SIZE


@pytest.mark.parametrize("preferred", [MIN_PART_SIZE, 6 * MiB, 64 * MiB, MAX_PART_SIZE])
def test_max_size_for_unknown_size_matches_the_schedule(preferred: int) -> None:
    schedule_total = sum(part_size_for_unknown_size(n, preferred) for n in range(1, MAX_PARTS + 1))
    assert max_size_for_unknown_size(preferred) == min(schedule_total, MAX_OBJECT_SIZE)
