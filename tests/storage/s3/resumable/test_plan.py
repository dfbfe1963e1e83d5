"""How a resumable upload's bytes are cut into S3 parts (proxy/storage/s3/resumable/plan.py)."""

from __future__ import annotations

from typing import Any

from hypothesis import example, given, settings
from hypothesis import strategies as st

from proxy.storage.s3.limits import MAX_PART_SIZE, MAX_PARTS, MIN_PART_SIZE
from proxy.storage.s3.resumable.plan import leftover_is_part, part_target
from tests.conftest import MiB
from tests.storage.s3.resumable.support import PART, SIX

# The decisions themselves, pure: never more than max_parts parts, no part but the
# last under MIN_PART_SIZE, every byte in exactly one part.


@given(
    size=st.sampled_from([PART, SIX, 8 * MiB, PART + 1]),
    buffered=st.integers(0, 16 * MiB),
    to_come=st.none() | st.integers(0, 32 * MiB),
)
def test_part_target_leaves_no_small_rest(size: int, buffered: int, to_come: int | None) -> None:
    target = part_target(size, buffered, to_come)
    if buffered >= size:
        assert target == buffered
        return
    assert size <= target <= min(size + MIN_PART_SIZE - 1, MAX_PART_SIZE)
    if to_come is not None:
        rest = buffered + to_come - target
        assert rest <= 0 or rest >= MIN_PART_SIZE


def simulate(
    length: int, part_size: int, patches: list[tuple[int, int | None]], max_parts: int
) -> tuple[list[int], bool]:
    """What _Append and _finish do with an upload of known length, in sizes only:
    the part sizes it ends with and whether it was one PutObject. Each PATCH is
    (bytes that arrive, Content-Length or None)."""
    parts: list[int] = []
    tail = offset = 0
    for sent, expected in patches:
        buf, consumed = tail, 0
        target = part_target(part_size, buf, expected)
        while True:
            if buf >= target:
                parts.append(buf)
                buf = 0
                target = part_target(part_size, 0, None if expected is None else expected - consumed)
            if consumed == sent:
                break
            step = min(target - buf, sent - consumed)
            buf, consumed = buf + step, consumed + step
        offset += sent
        number = len(parts) + 1
        if leftover_is_part(
            buffered=buf,
            number=number,
            part_size=part_size,
            growing=False,
            length=length,
            end=offset,
            max_parts=max_parts,
        ):
            parts.append(buf)
            buf = 0
        tail = buf
    assert offset == length
    if not parts:
        return [tail], True
    if tail:
        parts.append(tail)
    return parts, False


# Not much under 1 MiB: the simulation takes one step per PATCH.
patch_sizes = st.sampled_from(
    [MiB // 3, MiB, PART - 1, PART, PART + 3, SIX, 8 * MiB, 11 * MiB, 13 * MiB, 40 * MiB]
)


@given(
    max_parts=st.integers(1, 40),
    part_size=st.sampled_from([PART, SIX, 8 * MiB]),
    fill=st.floats(0.01, 1.0),
    cycle=st.lists(st.tuples(patch_sizes, st.sampled_from(["announced", "chunked", "cut"])), min_size=1),
)
@settings(deadline=None)
@example(max_parts=MAX_PARTS, part_size=SIX, fill=1.0, cycle=[(PART + 3, "announced")])
@example(max_parts=MAX_PARTS, part_size=SIX, fill=0.999, cycle=[(8 * MiB, "announced"), (PART, "cut")])
def test_parts_stay_valid_and_within_max_parts(
    max_parts: int, part_size: int, fill: float, cycle: list[tuple[int, str]]
) -> None:
    # An upload that part_size_for_known_size would give this part size.
    length = max(1, int(max_parts * part_size * fill))
    patches: list[tuple[int, int | None]] = []
    offset, i = 0, 0
    while offset < length:
        size, kind = cycle[i % len(cycle)]
        i += 1
        size = min(size, length - offset)
        if kind == "cut" and size > 1:
            patches.append((size // 2, size))  # announced, then cut off halfway
            size //= 2
        else:
            patches.append((size, size if kind == "announced" else None))
        offset += size
    parts, single = simulate(length, part_size, patches, max_parts)
    assert sum(parts) == length
    if single:
        assert length <= part_size + MIN_PART_SIZE - 1
        return
    assert len(parts) <= max_parts
    assert all(p >= MIN_PART_SIZE for p in parts[:-1])
    assert all(p <= min(part_size + MIN_PART_SIZE - 1, MAX_PART_SIZE) for p in parts)


def test_a_leftover_that_would_need_too_many_parts_stays_a_tail() -> None:
    decide: dict[str, Any] = {"part_size": SIX, "growing": False, "max_parts": 10}
    # 10 parts of 6 MiB: a 5 MiB part now would leave 55 MiB for 9 parts of 6 MiB.
    length = 60 * MiB
    assert not leftover_is_part(buffered=PART, number=1, length=length, end=PART, **decide)
    assert leftover_is_part(buffered=PART, number=1, length=length - MiB, end=PART, **decide)
    # Too small, growing, unknown length, or all one PutObject: a tail.
    assert not leftover_is_part(buffered=PART - 1, number=1, length=length - MiB, end=PART - 1, **decide)
    assert not leftover_is_part(
        buffered=PART, number=1, length=length, end=PART, **{**decide, "growing": True}
    )
    assert not leftover_is_part(buffered=PART, number=1, length=None, end=PART, **decide)
    assert not leftover_is_part(buffered=PART + 1, number=1, length=PART + 1, end=PART + 1, **decide)
    # The end of the upload: its last part, once there is a part before it.
    assert leftover_is_part(buffered=1, number=2, length=SIX + 1, end=SIX + 1, **decide)
    assert not leftover_is_part(buffered=1, number=1, length=SIX + 1, end=SIX + 1, **decide)
