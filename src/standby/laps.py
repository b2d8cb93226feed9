"""The time each step of an operation took: one clock for a rejoin, the switchover command and the
agent's own operations, which each say their steps their own way (a report line, a table row, a
history record)."""

from __future__ import annotations

import time
from collections.abc import Callable


class Laps:
    """Each step's name and the seconds since the previous step (or the start), in ``steps``, and the
    monotonic time each ended, in ``ends``. ``digits``: round the seconds kept (not those returned)."""

    def __init__(self, steps: list[tuple[str, float]] | None = None, digits: int | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.steps: list[tuple[str, float]] = steps if steps is not None else []
        self.ends: list[float] = []
        self._digits, self._clock = digits, clock
        self._t = clock()

    def lap(self, name: str) -> float:
        """Close the step ``name`` now; the seconds it took."""
        now = self._clock()
        took = now - self._t
        self.steps.append((name, took if self._digits is None else round(took, self._digits)))
        self.ends.append(now)
        self._t = now
        return took
