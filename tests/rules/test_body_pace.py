"""The minimum body rate (proxy/rules/body_pace.py): examples, and the promises of
its docstring checked against any pattern of arrivals.

Times are whole numbers in the property tests (of any unit: the rule only adds and
compares them), so that sums are exact and a span's edges are where they seem."""

from __future__ import annotations

import itertools
import math

from hypothesis import given
from hypothesis import strategies as st

from proxy.rules.body_pace import Pace, Window, judge, window_end

PACE = Pace(min_rate=100, window=10)  # 1,000 bytes per 10 s of waiting


def test_a_window_is_judged_only_at_its_end() -> None:
    assert window_end(PACE, Window()) == 10
    assert judge(PACE, Window(), 9.99, 0) == Window()
    assert judge(PACE, Window(4, 50), 13.9, 50) == Window(4, 50)


def test_a_window_with_its_quota_starts_the_next_where_it_was_judged() -> None:
    assert judge(PACE, Window(), 10, 1000) == Window(10, 1000)
    assert judge(PACE, Window(10, 1000), 20, 2500) == Window(20, 2500)


def test_a_window_without_its_quota_is_too_slow() -> None:
    assert judge(PACE, Window(), 10, 999) is None
    # A burst does not pay for the windows after it.
    assert judge(PACE, Window(10, 1_000_000), 20, 1_000_999) is None


def test_judged_late_the_client_gets_the_benefit() -> None:
    # Bytes that came while the event loop was late count for the window just ended,
    # and the next one starts when it was judged.
    assert judge(PACE, Window(), 12.5, 1000) == Window(12.5, 1000)


def test_a_fractional_quota_is_met_by_the_next_whole_byte() -> None:
    pace = Pace(min_rate=0.5, window=3)  # 1.5 bytes
    assert judge(pace, Window(), 3, 1) is None
    assert judge(pace, Window(), 3, 2) == Window(3, 2)


def test_no_rate_or_no_window_turns_the_rule_off() -> None:
    for pace in (Pace(0, 10), Pace(100, 0)):
        assert not pace.on
        assert window_end(pace, Window()) == math.inf
        assert judge(pace, Window(), 1e12, 0) == Window()


Arrivals = list[tuple[int, int]]  # (seconds of waiting since the previous arrival, bytes)


def simulate(pace: Pace, arrivals: Arrivals) -> tuple[int | None, list[float]]:
    """Wait for ``arrivals`` as body_wait does: judge each window at its end, before
    bytes arriving that very moment (the harsher order for the client). The waiting
    time of the cut (None: the body ended first) and the ends judged."""
    window, received, now = Window(), 0, 0
    ends: list[float] = []
    for gap, size in arrivals:
        now += gap
        while window_end(pace, window) <= now:
            end = window_end(pace, window)
            ends.append(end)
            judged = judge(pace, window, end, received)
            if judged is None:
                return int(end), ends
            window = judged
        received += size
    return None, ends


def arrival_times(arrivals: Arrivals) -> list[tuple[int, int]]:
    times, now = [], 0
    for gap, size in arrivals:
        now += gap
        times.append((now, size))
    return times


paces = st.builds(Pace, min_rate=st.integers(1, 50), window=st.integers(1, 20))
arrival_lists = st.lists(st.tuples(st.integers(0, 30), st.integers(1, 400)), max_size=60)


@given(paces, arrival_lists)
def test_a_cut_body_brought_less_than_its_quota_in_the_window_before(pace: Pace, arrivals: Arrivals) -> None:
    cut, _ = simulate(pace, arrivals)
    if cut is not None:
        brought = sum(size for at, size in arrival_times(arrivals) if cut - pace.window <= at < cut)
        assert brought < pace.min_rate * pace.window


@given(paces, arrival_lists)
def test_any_two_windows_short_of_one_quota_end_the_body_within_them(pace: Pace, arrivals: Arrivals) -> None:
    cut, _ = simulate(pace, arrivals)
    times = arrival_times(arrivals)
    if not times:
        return
    last = times[-1][0]  # the body ends here: no waiting after it
    # Bytes in a span (a, a + 2 window] are fewest when it starts at an arrival (or at 0).
    for start in [0] + [at for at, _ in times]:
        span_end = start + 2 * pace.window
        brought = sum(size for at, size in times if start < at <= span_end)
        if span_end <= last and brought < pace.min_rate * pace.window:
            assert cut is not None and cut <= span_end, (start, cut)
            return


@given(
    st.integers(1, 50),
    st.integers(1, 20),
    st.integers(1, 500),
    st.integers(0, 300),
    st.integers(1, 200),
)
def test_a_steady_body_at_the_rate_plus_a_chunk_per_window_is_never_cut(
    min_rate: int, window: int, chunk: int, extra: int, count: int
) -> None:
    pace = Pace(min_rate, window)
    # chunk bytes every `every` seconds: at least min_rate + chunk / window bytes per second.
    rate = min_rate + chunk / window + extra
    every = chunk / rate
    times = [every * (i + 1) for i in range(count)]
    # Exact times are not whole here: simulate with them directly.
    window_now, received = Window(), 0
    for at in times:
        while window_end(pace, window_now) <= at:
            judged = judge(pace, window_now, window_end(pace, window_now), received)
            assert judged is not None, (at, received)
            window_now = judged
        received += chunk


@given(paces, arrival_lists)
def test_window_ends_only_move_forward(pace: Pace, arrivals: Arrivals) -> None:
    _, ends = simulate(pace, arrivals)
    assert ends == sorted(ends)
    assert all(b - a == pace.window for a, b in itertools.pairwise(ends))


@given(paces, arrival_lists, st.integers(0, 1000))
def test_judging_before_a_window_ends_changes_nothing(pace: Pace, arrivals: Arrivals, seed: int) -> None:
    window = Window(start=seed % 17, received=seed)
    for at, size in arrival_times(arrivals):
        if at < window_end(pace, window):
            assert judge(pace, window, at, window.received + size) == window
