"""QuickCalls: inline while calls are quick, in threads for a while after a slow one."""

from __future__ import annotations

import asyncio
import logging
import threading
import time

import pytest

from proxy.storage.local.quick_calls import QuickCalls


def where(pause: float = 0.0) -> str:
    time.sleep(pause)
    return threading.current_thread().name


async def test_quick_calls_run_on_the_loop_and_slow_ones_send_the_next_to_threads(
    caplog: pytest.LogCaptureFixture,
) -> None:
    loop_thread = threading.current_thread().name
    calls = QuickCalls(slow=0.01, back_off=1.0, in_a_row=2)
    assert await calls.run(where) == loop_thread
    assert await calls.run(where, 0.05) == loop_thread  # one slow call is taken for chance
    assert await calls.run(where) == loop_thread
    assert await calls.run(where, 0.05) == loop_thread
    with caplog.at_level(logging.INFO, logger="proxy.storage.local.quick_calls"):
        assert await calls.run(where, 0.05) == loop_thread  # two in a row: found out afterwards
    assert "in threads for the next 1 s" in caplog.text
    assert await calls.run(where) != loop_thread
    assert await calls.run(where) != loop_thread
    await asyncio.sleep(1.2)
    assert await calls.run(where) == loop_thread  # the back-off is over: inline again


async def test_errors_pass_through_either_way() -> None:
    calls = QuickCalls(slow=0.01, back_off=10, in_a_row=1)

    def fails() -> None:
        raise FileNotFoundError("gone")

    with pytest.raises(FileNotFoundError):
        await calls.run(fails)
    await calls.run(where, 0.05)
    with pytest.raises(FileNotFoundError):
        await calls.run(fails)
