"""Issue 13, part 3: the agent's periodic loops wake together on one grid (agent.ticks), and waiting on it
never makes a loop later than sleeping its own period did (the step's lateness is a safety input)."""

from __future__ import annotations

import asyncio
import math

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from standby.agent import probers as probers_module
from standby.agent.ticks import Ticks, instant_after

INTERVALS = st.sampled_from([0.02, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 1.0, 2.0])
TIMES = st.floats(min_value=0.0, max_value=1e10, allow_nan=False)  # the monotonic clock after 300 years
PERIODS = st.sampled_from([None, 0.5, 1.0, 2.5, 5.0])


def _ulps(*xs: float) -> float:
    return 4 * max(math.ulp(x) for x in xs)  # a few units in the last place, not a tolerance in time


def _near_multiples() -> st.SearchStrategy[tuple[float, float]]:
    """A time a few units in the last place from a multiple of the interval, where rounding decides."""
    def build(k: int, interval: float, nudge: int) -> tuple[float, float]:
        t = k * interval
        for _ in range(abs(nudge)):
            t = math.nextafter(t, math.inf if nudge > 0 else -math.inf)
        return max(t, 0.0), interval
    return st.builds(build, st.integers(0, 10**11), INTERVALS, st.integers(-3, 3))


@given(TIMES, INTERVALS)
def test_i13_the_next_instant_is_after_and_within_one_interval(t: float, interval: float) -> None:
    at = instant_after(t, interval)
    assert t < at <= t + interval + _ulps(t, at)


@given(_near_multiples())
@example((0.6, 0.3))  # 0.6 / 0.3 rounds down to 1.9999999999999998
@example((0.8999999999999999, 0.3))
def test_i13_the_next_instant_near_a_multiple_is_the_next_multiple(case: tuple[float, float]) -> None:
    t, interval = case
    at = instant_after(t, interval)
    assert t < at <= t + interval + _ulps(t, at)
    n = round(at / interval)
    assert at == n * interval  # computed as n * interval: every loop gets the very same float


@given(TIMES, INTERVALS, PERIODS, st.floats(min_value=0.0, max_value=3.0))
def test_i13_a_loop_on_the_grid_is_never_later_than_its_period(since: float, interval: float, period: float | None,
                                                               ran_s: float) -> None:
    """The safety half: whatever the run took (``ran_s``), the next begins at most its period after the last
    began (where ``asyncio.sleep(period - ran)`` would have woken it, or at once) and never in the past."""
    p = interval if period is None else period
    now = since + ran_s
    at = Ticks(interval).when(since, period, now)
    assert at <= since + p + _ulps(since, at)
    assert at > now or at == since + p  # in the future, or what the old sleep would have been (at once)
    if p >= interval and at > now:  # on the grid unless the run went past its instant
        assert at == instant_after(since + p - interval, interval) or at == since + p


@given(st.integers(min_value=0, max_value=10**7), st.lists(st.floats(min_value=0.01, max_value=0.99), min_size=2,
                                                          max_size=6), INTERVALS)
def test_i13_loops_begun_within_one_grid_interval_share_their_next_instant(k: int, fractions: list[float],
                                                                          interval: float) -> None:
    """What saves the wake-ups: runs begun anywhere inside one grid interval wait for the same instant."""
    assert len({Ticks(interval).when((k + f) * interval) for f in fractions}) == 1


def test_i13_a_period_shorter_than_the_grid_keeps_its_own_period() -> None:
    """Finding T1 (second reader): at a heartbeat interval over a second, the services' health and the warm
    followers' question must still come every second, not every interval."""
    assert Ticks(2.0).when(100.3, 1.0) == 101.3
    with pytest.raises(ValueError, match="positive interval"):
        Ticks(0.0)


def test_i13_a_run_that_went_past_its_instant_waits_its_own_period_not_the_next_instant() -> None:
    """Finding T2: a step begun off the grid (at 10.15 on a 0.2 s grid) that ran past 10.2 begins again at
    10.35, as the sleep did, not at once (a second step right away) nor at 10.4 (later than its period)."""
    assert Ticks(0.2).when(10.15, None, now=10.25) == pytest.approx(10.35)
    assert Ticks(0.2).when(10.15, None, now=10.4) == pytest.approx(10.35)  # past that too: the caller goes at once


def test_i13_loops_on_the_grid_arm_their_timers_for_the_same_instants() -> None:
    """Three loops begun at different moments ask the event loop for timers at the very same instants (one
    wake-up serves them all); with their own sleeps they would ask for as many different times."""
    interval, runs = 0.02, 6
    whens: list[float] = []

    async def go() -> None:
        loop = asyncio.get_running_loop()
        call_at = loop.call_at

        def recording(when: float, *args: object, **kw: object) -> asyncio.TimerHandle:
            whens.append(when)
            return call_at(when, *args, **kw)  # type: ignore[arg-type]

        loop.call_at = recording  # type: ignore[method-assign]
        ticks = Ticks(interval)

        async def one(offset: float) -> None:
            await asyncio.sleep(offset)
            for _ in range(runs):
                await ticks.wait(since=loop.time())

        await asyncio.gather(*(one(k * interval / 4) for k in range(3)))

    asyncio.run(go())
    grid = [w for w in whens if w == instant_after(w - interval / 2, interval)]
    assert len(grid) == 3 * runs  # every wait asked for an instant of the grid ...
    assert len(set(grid)) <= runs + 2  # ... and the three loops shared them


def test_i13_a_run_that_took_its_whole_period_is_followed_at_once() -> None:
    async def go() -> float:
        loop = asyncio.get_running_loop()
        began = loop.time() - 0.5  # a run that began half a second ago, on a 0.1 s grid
        t = loop.time()
        await Ticks(0.1).wait(since=began)
        return loop.time() - t

    assert asyncio.run(go()) < 0.05


def test_i13_a_cancelled_wait_leaves_no_timer_behind() -> None:
    async def go() -> int:
        loop = asyncio.get_running_loop()
        task = loop.create_task(Ticks(10.0).wait())
        await asyncio.sleep(0.01)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return sum(1 for h in loop._scheduled if not h.cancelled())  # type: ignore[attr-defined]

    assert asyncio.run(go()) == 0


def test_i13_the_probes_once_a_second_stay_once_a_second() -> None:
    """The services' health and the warm followers' question: between 0.8 and 1 s apart at 200 ms."""
    t = Ticks(0.2)
    for now in (100.0, 100.05, 100.199, 123.456):
        assert now + probers_module.HEALTH_EVERY_S - 0.2 < t.when(now, probers_module.HEALTH_EVERY_S) <= now + 1.0 + 1e-9
