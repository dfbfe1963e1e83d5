"""The shared upload memory budget (proxy/streaming/budget.py): waiting, FIFO, cancellation."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.streaming.budget import MemoryBudget

TIMEOUT = 2


async def settle(rounds: int = 10) -> None:
    """Let every ready task run until it blocks again."""
    for _ in range(rounds):
        await asyncio.sleep(0)


def acquire_now(budget: MemoryBudget, n: int) -> int:
    """Acquire without suspending at all, or fail: proves the fast path is immediate."""
    coro = budget.acquire(n)
    try:
        coro.send(None)
    except StopIteration as done:
        granted: int = done.value
        return granted
    coro.close()
    raise AssertionError(f"acquire({n}) had to wait")


async def waiter(budget: MemoryBudget, n: int, log: list[int] | None = None) -> asyncio.Task[int]:
    """Start acquire(n) in a task and let it reach its wait."""

    async def run() -> int:
        granted = await budget.acquire(n)
        if log is not None:
            log.append(n)
        return granted

    task = asyncio.create_task(run())
    await settle()
    return task


@pytest.mark.parametrize("total", [0, -1])
def test_budget_must_be_positive(total: int) -> None:
    with pytest.raises(ValueError, match="positive"):
        MemoryBudget(total)


async def test_acquire_within_budget_is_immediate() -> None:
    budget = MemoryBudget(100)
    assert acquire_now(budget, 40) == 40
    assert acquire_now(budget, 60) == 60  # exactly filling the budget is fine
    assert budget.in_use == 100
    budget.release(100)
    assert budget.in_use == 0


async def test_acquire_beyond_budget_waits_for_release() -> None:
    budget = MemoryBudget(100)
    assert await budget.acquire(80) == 80
    task = await waiter(budget, 30)
    assert not task.done()
    assert budget.in_use == 80

    budget.release(5)  # 75 + 30 > 100: still waiting
    await settle()
    assert not task.done()

    budget.release(5)  # 70 + 30 == 100: granted
    assert await asyncio.wait_for(task, TIMEOUT) == 30
    assert budget.in_use == 100


async def test_waiters_are_served_first_come_first_served() -> None:
    budget = MemoryBudget(100)
    await budget.acquire(90)
    order: list[int] = []
    big = await waiter(budget, 60, order)
    small = await waiter(budget, 5, order)  # would fit right now, but must queue behind big
    assert not big.done() and not small.done()
    late = await waiter(budget, 1, order)  # a new acquire does not jump the queue either
    assert not late.done()
    assert budget.in_use == 90

    budget.release(50)  # 40 in use: big fits, and then 100 in use
    await asyncio.wait_for(big, TIMEOUT)
    await settle()
    assert order == [60]
    assert budget.in_use == 100

    budget.release(60)
    await asyncio.wait_for(asyncio.gather(small, late), TIMEOUT)
    assert order == [60, 5, 1]
    assert budget.in_use == 46


async def test_one_release_wakes_every_waiter_that_fits() -> None:
    budget = MemoryBudget(100)
    await budget.acquire(100)
    tasks = [await waiter(budget, 30) for _ in range(4)]
    budget.release(100)
    await settle()
    assert [t.done() for t in tasks] == [True, True, True, False]
    assert budget.in_use == 90
    budget.release(30)
    await asyncio.wait_for(tasks[3], TIMEOUT)
    assert budget.in_use == 90


async def test_request_larger_than_total_is_clamped() -> None:
    budget = MemoryBudget(100)
    assert budget.clamp(500) == 100
    assert budget.clamp(100) == 100
    assert budget.clamp(7) == 7
    assert acquire_now(budget, 500) == 100
    assert budget.in_use == 100
    budget.release(100)

    await budget.acquire(1)
    task = await waiter(budget, 10**9)
    assert not task.done()
    budget.release(1)
    granted = await asyncio.wait_for(task, TIMEOUT)  # does not deadlock
    assert granted == 100
    budget.release(granted)
    assert budget.in_use == 0


async def test_cancelled_waiter_lets_later_waiters_proceed() -> None:
    budget = MemoryBudget(100)
    await budget.acquire(60)
    blocked = await waiter(budget, 50)  # 110 > 100
    behind = await waiter(budget, 10)  # would fit, but queued behind the blocked one
    assert not behind.done()

    blocked.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(blocked, TIMEOUT)
    assert await asyncio.wait_for(behind, TIMEOUT) == 10
    assert budget.in_use == 70
    # The queue is empty again: the fast path works.
    assert acquire_now(budget, 30) == 30


async def test_cancelled_waiter_in_the_middle_of_the_queue() -> None:
    budget = MemoryBudget(100)
    await budget.acquire(100)
    order: list[int] = []
    first = await waiter(budget, 20, order)
    middle = await waiter(budget, 30, order)
    last = await waiter(budget, 40, order)
    middle.cancel()
    await settle()
    assert middle.cancelled()
    assert not first.done() and not last.done()
    budget.release(100)
    await asyncio.wait_for(asyncio.gather(first, last), TIMEOUT)
    assert order == [20, 40]
    assert budget.in_use == 60


async def test_timed_out_acquire_leaves_no_trace() -> None:
    budget = MemoryBudget(100)
    await budget.acquire(100)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(budget.acquire(10), 0.01)
    assert budget.in_use == 100
    budget.release(100)
    assert budget.in_use == 0
    assert acquire_now(budget, 100) == 100


async def test_waiter_cancelled_right_after_being_granted_hands_bytes_back() -> None:
    budget = MemoryBudget(100)
    await budget.acquire(100)
    granted_then_cancelled = await waiter(budget, 40)
    next_in_line = await waiter(budget, 80)

    budget.release(100)  # grants 40 to the first waiter, which has not run yet
    assert budget.in_use == 40
    granted_then_cancelled.cancel()  # ...and is cancelled before it resumes
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(granted_then_cancelled, TIMEOUT)

    # Its 40 bytes were handed back, which made room for the next waiter.
    assert await asyncio.wait_for(next_in_line, TIMEOUT) == 80
    assert budget.in_use == 80
    budget.release(80)
    assert budget.in_use == 0


async def test_granted_then_cancelled_alone_returns_to_zero() -> None:
    budget = MemoryBudget(50)
    await budget.acquire(50)
    task = await waiter(budget, 50)
    budget.release(50)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, TIMEOUT)
    assert budget.in_use == 0
    assert budget.peak == 50


async def test_peak_is_the_high_water_mark() -> None:
    budget = MemoryBudget(100)
    assert budget.peak == 0
    await budget.acquire(30)
    await budget.acquire(50)
    assert budget.peak == 80
    budget.release(50)
    await budget.acquire(20)
    assert (budget.in_use, budget.peak) == (50, 80)
    budget.release(50)
    assert (budget.in_use, budget.peak) == (0, 80)

    # Grants made on release count too.
    await budget.acquire(95)
    task = await waiter(budget, 10)
    budget.release(5)
    await asyncio.wait_for(task, TIMEOUT)
    assert budget.peak == 100


@given(
    st.integers(min_value=1, max_value=100),
    st.lists(st.tuples(st.integers(min_value=0, max_value=150), st.integers(0, 3)), min_size=1, max_size=25),
)
def test_many_uploads_stay_within_budget_and_in_order(total: int, requests: list[tuple[int, int]]) -> None:
    async def scenario() -> None:
        budget = MemoryBudget(total)
        granted_order: list[int] = []
        over_budget: list[int] = []

        async def upload(index: int, n: int, hold: int) -> None:
            got = await budget.acquire(n)
            assert got == min(n, total)
            granted_order.append(index)
            if budget.in_use > total:
                over_budget.append(budget.in_use)
            for _ in range(hold):
                await asyncio.sleep(0)
            budget.release(got)

        tasks = [asyncio.create_task(upload(i, n, hold)) for i, (n, hold) in enumerate(requests)]
        await asyncio.wait_for(asyncio.gather(*tasks), TIMEOUT)
        assert granted_order == list(range(len(requests)))
        assert over_budget == []
        assert budget.in_use == 0
        assert max(min(n, total) for n, _ in requests) <= budget.peak <= total

    asyncio.run(scenario())


async def test_negative_reservation_is_refused() -> None:
    budget = MemoryBudget(10)
    with pytest.raises(ValueError):
        await budget.acquire(-1)
    assert budget.in_use == 0
