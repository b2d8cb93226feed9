"""One grid of instants, a heartbeat interval apart, on which the agent's periodic loops wake together.

The heartbeat sender, the tie-breaker's echo, the ARP watch and the decision step each slept one
interval from their own last run: four timers, four wake-ups of the event loop per interval. At rest the
wake-up is what costs (on a virtual machine the kernel's side of waking a sleeping thread outweighs the
Python it runs: bench/agent.py's calibration), so they now wait for the same instants, the multiples of
the interval on the loop's clock, and the loop wakes once for all of them (asyncio runs every timer that
is due when it wakes).

It owns: the grid and the wait for its next instant.
It may not: lengthen a loop's period. A wait ends at the first instant of the grid after now: one that
ran late (a stall, a slow step) waits less than an interval, never more, so neither the sender's gaps nor
the step's lateness (what Observation.gap reads as a stall) can grow by waiting on the grid.
"""

from __future__ import annotations

import asyncio
import math


def instant_after(t: float, interval_s: float) -> float:
    """The first multiple of ``interval_s`` later than ``t`` (strictly: a loop run on an instant waits a whole interval)."""
    at = (math.floor(t / interval_s) + 1) * interval_s
    while at <= t:  # t a hair below a multiple that floating point rounds up to it
        at += interval_s
    return at


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


class Ticks:
    def __init__(self, interval_s: float) -> None:
        if not interval_s > 0:
            raise ValueError(f"a grid needs a positive interval, not {interval_s}")
        self.interval_s = interval_s

    def when(self, since: float, period_s: float | None = None) -> float:
        """When a loop that last ran at ``since`` and runs every ``period_s`` (default: one interval) runs
        next: the first instant after since + period - interval, so at most ``period_s`` after ``since`` and
        more than ``period_s`` - interval after it (a period of a second at 200 ms: between 0.8 and 1 s)."""
        period = self.interval_s if period_s is None else period_s
        if period < self.interval_s:
            raise ValueError(f"a period of {period} s is shorter than the grid's {self.interval_s} s")
        return instant_after(since + period - self.interval_s, self.interval_s)

    async def wait(self, period_s: float | None = None, since: float | None = None) -> None:
        """Sleep until ``when(since)`` (``since``: when the loop's last run began, on the loop's clock; default
        now), or only yield if that has passed already: a run that took its whole period is followed at once.
        The timer is due at the very instant the other loops' are: asyncio.sleep adds a delay to its own
        reading of the clock, so theirs would differ by microseconds and coincide only through the selector
        rounding its timeout up to a millisecond."""
        loop = asyncio.get_running_loop()
        at = self.when(loop.time() if since is None else since, period_s)
        if at <= loop.time():
            await asyncio.sleep(0)
            return
        waiter: asyncio.Future[None] = loop.create_future()
        handle = loop.call_at(at, _wake, waiter)
        try:
            await waiter
        finally:
            handle.cancel()
