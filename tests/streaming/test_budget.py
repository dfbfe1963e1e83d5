"""The shared upload memory budget (proxy/streaming/budget.py): grants that fit,
refusals that reserve nothing, releases that cannot go below zero; fixed charges
granted always, counted against what may still be reserved."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.streaming.budget import MemoryBudget


@pytest.mark.parametrize("total", [0, -1])
def test_budget_must_be_positive(total: int) -> None:
    with pytest.raises(ValueError, match="positive"):
        MemoryBudget(total)


def test_grants_what_fits_and_refuses_the_rest() -> None:
    budget = MemoryBudget(100)
    assert budget.try_acquire(40)
    assert budget.try_acquire(60)  # exactly filling the budget is fine
    assert not budget.try_acquire(1)
    assert budget.in_use == 100
    budget.release(30)
    assert not budget.try_acquire(31)
    assert budget.in_use == 70  # a refusal reserves nothing
    assert budget.try_acquire(30)
    assert budget.peak == 100


def test_a_request_over_the_whole_budget_is_refused() -> None:
    budget = MemoryBudget(100)
    assert not budget.try_acquire(101)
    assert budget.in_use == 0


def test_negative_requests_and_over_releases_are_refused() -> None:
    budget = MemoryBudget(100)
    with pytest.raises(ValueError):
        budget.try_acquire(-1)
    assert budget.try_acquire(10)
    with pytest.raises(ValueError):
        budget.release(11)
    with pytest.raises(ValueError):
        budget.release(-1)
    assert budget.in_use == 10


@given(st.lists(st.tuples(st.booleans(), st.integers(0, 60)), max_size=60))
def test_in_use_never_exceeds_the_total(steps: list[tuple[bool, int]]) -> None:
    budget = MemoryBudget(100)
    held: list[int] = []
    for take, n in steps:
        if take:
            before = budget.in_use
            granted = budget.try_acquire(n)
            assert granted == (before + n <= 100)
            if granted:
                held.append(n)
        elif held:
            budget.release(held.pop())
        assert 0 <= budget.in_use <= budget.total
        assert budget.in_use == sum(held)
        assert budget.peak >= budget.in_use


def test_a_charge_is_granted_past_the_total_and_leaves_less_to_reserve() -> None:
    budget = MemoryBudget(100)
    budget.charge(30)
    assert budget.try_acquire(70)
    assert not budget.try_acquire(1)  # 30 charged + 70 reserved: full
    budget.charge(50)  # held whatever the budget says
    assert (budget.charged, budget.in_use, budget.peak) == (80, 70, 70)
    budget.release(70)
    assert not budget.try_acquire(21)  # the charges alone leave 20
    assert budget.try_acquire(20)
    budget.release(20)
    budget.refund(80)
    assert budget.try_acquire(100)
    assert (budget.charged, budget.in_use) == (0, 100)


def test_negative_charges_and_over_refunds_are_refused() -> None:
    budget = MemoryBudget(100)
    with pytest.raises(ValueError):
        budget.charge(-1)
    budget.charge(10)
    with pytest.raises(ValueError):
        budget.refund(11)
    with pytest.raises(ValueError):
        budget.refund(-1)
    assert budget.charged == 10
