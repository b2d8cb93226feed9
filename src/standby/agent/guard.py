"""Observation sources and loops that fail read as "unknown", never as a dead agent.

An agent that crashes is worse than one that sees less: its death makes
``standby fence --if-unclean`` stop the primary. So every observation source
(PostgreSQL, carriers, probes) and every background loop runs through here: an
exception gives the caller's fallback (the last known value, or unknown), is
logged, and is recorded in the history once per failure (not once per step),
and its end is recorded once too.

It owns: which sources are failing now, and the record of it.
It may not: choose what a failed source reads as (the caller passes the
fallback), nor swallow ``asyncio.CancelledError`` (a stopping agent must stop).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

log = logging.getLogger("standby.agent")
T = TypeVar("T")


def describe(e: BaseException | str) -> str:
    if isinstance(e, str):
        return e
    text = str(e)
    return f"{type(e).__name__}: {text.splitlines()[0]}" if text else type(e).__name__


class Guard:
    def __init__(self, event: Callable[..., None]) -> None:
        self._event = event
        self.failing: dict[str, str] = {}  # source -> its error, while it fails

    def failed(self, source: str, e: BaseException | str, what: str = "observation") -> None:
        """Record ``source`` failing (``what``: observation, step, ...); again only if its error changes."""
        error = describe(e)
        if self.failing.get(source) != error:  # said once per error, not at every step it lasts
            log.warning("%s failed: %s", source, error, exc_info=isinstance(e, BaseException) and source not in self.failing)
            self._event(f"{what}_failed", source=source, error=error)
        else:
            log.debug("%s still failing: %s", source, error)
        self.failing[source] = error

    def ok(self, source: str, what: str = "observation") -> None:
        if self.failing.pop(source, None) is not None:
            self._event(f"{what}_recovered", source=source)

    async def read(self, source: str, read: Callable[[], Awaitable[T]], fallback: T) -> T:
        """``await read()``, or ``fallback`` if it raises."""
        try:
            value = await read()
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001  (a failing source reads as its fallback; the agent goes on)
            self.failed(source, e)
            return fallback
        self.ok(source)
        return value

    async def forever(self, source: str, loop: Callable[[], Awaitable[None]], pause_s: float,
                      stopping: asyncio.Event) -> None:
        """Run a background loop; if it raises, record it and start it again after ``pause_s``."""
        while not stopping.is_set():
            try:
                await loop()
                return
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001  (a failing loop is recorded and started again)
                self.failed(source, e, "loop")
            try:
                await asyncio.wait_for(stopping.wait(), pause_s)
            except TimeoutError:
                pass
