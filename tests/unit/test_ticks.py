"""Issue 13, part 3: the agent's periodic loops wake together on one grid (agent.ticks), and waiting on it
never makes a loop later than sleeping its own interval did (the step's lateness is a safety input)."""

from __future__ import annotations

import asyncio
import selectors
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from standby.agent.ticks import Ticks, instant_after

INTERVALS = st.sampled_from([0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 1.0])
TIMES = st.floats(min_value=0.0, max_value=1e7, allow_nan=False)


@given(TIMES, INTERVALS)
def test_i13_the_next_instant_is_after_and_within_one_interval(t: float, interval: float) -> None:
    at = instant_after(t, interval)
    assert t < at <= t + interval + 1e-9 * max(1.0, t)


@given(TIMES, INTERVALS, st.sampled_from([None, 1.0, 2.5, 5.0]))
def test_i13_a_loop_on_the_grid_is_never_later_than_its_period(since: float, interval: float,
                                                               period: float | None) -> None:
    """The safety half: from a run begun at ``since``, the next comes within its period (not later than
    ``asyncio.sleep(period)`` would have woken it), and, with a period longer than the grid's, not much
    earlier than the period either."""
    p = interval if period is None else max(period, interval)
    at = Ticks(interval).when(since, p)
    slack = 1e-9 * max(1.0, since)
    assert at <= since + p + slack
    assert at > since + p - interval - slack


@given(st.integers(min_value=0, max_value=10**7), st.lists(st.floats(min_value=0.01, max_value=0.99), min_size=2,
                                                          max_size=6), INTERVALS)
def test_i13_loops_begun_within_one_grid_interval_share_their_next_instant(k: int, fractions: list[float],
                                                                          interval: float) -> None:
    """What saves the wake-ups: runs begun anywhere inside one grid interval wait for the same instant."""
    assert len({Ticks(interval).when((k + f) * interval) for f in fractions}) == 1


def test_i13_a_period_shorter_than_the_grid_is_refused() -> None:
    with pytest.raises(ValueError, match="shorter than the grid"):
        Ticks(0.2).when(0.0, 0.1)
    with pytest.raises(ValueError, match="positive interval"):
        Ticks(0.0)


class CountingSelector(selectors.DefaultSelector):  # type: ignore[misc,valid-type]
    """Counts the event loop's waits that ended on a timer (nothing to read): its wake-ups for timers."""

    def __init__(self) -> None:
        super().__init__()
        self.timer_wakeups = 0

    def select(self, timeout: float | None = None) -> list[Any]:
        events: list[Any] = super().select(timeout)
        if not events and timeout:
            self.timer_wakeups += 1
        return events


def _wakeups(body: Any) -> int:
    sel = CountingSelector()
    loop = asyncio.SelectorEventLoop(sel)
    try:
        loop.run_until_complete(body())
    finally:
        loop.close()
    return sel.timer_wakeups


def test_i13_four_loops_on_one_grid_wake_the_event_loop_once_per_interval() -> None:
    """Four loops of 10 runs each, begun at different moments: on the grid about 10 timer wake-ups, each
    sleeping its own interval about 40 (the test fails if the grid's timers stop coinciding)."""
    interval, runs = 0.02, 10

    async def on_grid() -> None:
        ticks = Ticks(interval)

        async def one(offset: float) -> None:
            await asyncio.sleep(offset)
            for _ in range(runs):
                began = asyncio.get_running_loop().time()
                await ticks.wait(since=began)

        await asyncio.gather(*(one(k * interval / 5) for k in range(4)))

    async def own_sleeps() -> None:
        async def one(offset: float) -> None:
            await asyncio.sleep(offset)
            for _ in range(runs):
                await asyncio.sleep(interval)

        await asyncio.gather(*(one(k * interval / 5) for k in range(4)))

    grid, own = _wakeups(on_grid), _wakeups(own_sleeps)
    assert grid <= runs + 4  # the offsets' own sleeps, then one wake-up per instant
    assert own >= 3 * runs  # the comparison the grid is for: the same loops without it


def test_i13_a_run_that_took_its_whole_period_is_followed_at_once() -> None:
    async def go() -> float:
        loop = asyncio.get_running_loop()
        began = loop.time() - 0.5  # a run that began half a second ago, on a 0.1 s grid
        t = loop.time()
        await Ticks(0.1).wait(since=began)
        return loop.time() - t

    assert asyncio.run(go()) < 0.05
