"""One grid of instants, a heartbeat interval apart, on which the agent's periodic loops wake together.

The decision step slept what was left of its interval after each run; the tie-breaker's echo and the ARP
watch slept one interval after theirs, the services' health and the warm followers' question a second:
each its own timer, each its own wake-up of the event loop. At rest the waking is most of the cost (on
the virtual machine the benchmarks ran on, work right after a sleep costs many times what it costs warm:
bench/README.md, "What this machine charges for waking up"), so they now wait for the same instants, the
multiples of the interval on the loop's clock, and the loop wakes once for all of them (asyncio runs every
timer that is due when it wakes).

The heartbeat sender stays off the grid, on its own interval: on a grid, each node's sends would keep one
phase against the peer's steps for hours (the monotonic clocks drift that slowly), and an unlucky phase
would hold the peer's view of our acknowledgements an interval older for as long; it would also always
send the decision of the step before, since it runs before the step's answer from PostgreSQL comes back.

It owns: the grid and the wait for its next instant.
It may not: lengthen a loop's period. A wait ends at the first instant of the grid after the last run
began (plus the period, less one interval); if the run went past that instant, at the run's start plus the
period, as without the grid; if that has passed too, at once. So neither the step's lateness (what
Observation.gap reads as a stall) nor any probe's age can grow by waiting on the grid. A period shorter
than the grid's interval (a heartbeat interval over a second, with the services' health asked every
second) is kept off the grid.
"""

from __future__ import annotations

import asyncio
import math


def instant_after(t: float, interval_s: float) -> float:
    """The first multiple of ``interval_s`` later than ``t`` (strictly: a loop run on an instant waits a whole
    interval), always computed as n * interval_s so that loops agree on it to the last bit."""
    n = math.floor(t / interval_s) + 1
    while n * interval_s <= t:  # floating point rounded the quotient down
        n += 1
    while (n - 1) * interval_s > t:  # ... or up
        n -= 1
    return n * interval_s


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


class Ticks:
    def __init__(self, interval_s: float) -> None:
        if not interval_s > 0:
            raise ValueError(f"a grid needs a positive interval, not {interval_s}")
        self.interval_s = interval_s

    def when(self, since: float, period_s: float | None = None, now: float | None = None) -> float:
        """When a loop whose last run began at ``since`` and that runs every ``period_s`` (default: one interval)
        runs next, given the time ``now`` (default: ``since``): the first instant after since + period -
        interval, so at most ``period_s`` after ``since`` and more than ``period_s`` - interval after it (a
        period of a second at 200 ms: 0.8 to 1 s); since + period if that instant is not after ``now``, or if
        the period is shorter than the interval."""
        period = self.interval_s if period_s is None else period_s
        if period < self.interval_s:
            return since + period
        at = instant_after(since + period - self.interval_s, self.interval_s)
        return at if at > (since if now is None else now) else since + period

    async def wait(self, period_s: float | None = None, since: float | None = None) -> None:
        """Sleep until ``when`` (``since``: when the loop's last run began, on the loop's clock; default now), or
        only yield if that has passed: a run that took its whole period is followed at once. The timer is due
        at the very instant the other loops' are: asyncio.sleep adds a delay to its own reading of the clock,
        so theirs would differ by microseconds and coincide only through the selector rounding its timeout
        up to a millisecond."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        at = self.when(now if since is None else since, period_s, now)
        if at <= now:
            await asyncio.sleep(0)
            return
        waiter: asyncio.Future[None] = loop.create_future()
        handle = loop.call_at(at, _wake, waiter)
        try:
            await waiter
        finally:
            handle.cancel()
