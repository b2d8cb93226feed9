"""Maintenance: this node's automatic decisions suspended, for a bounded time.

A suspension that outlives its reason (a switchover that died half-way, a
person who forgot) silently leaves the pair without failover. So maintenance
always has a deadline (``timings.maintenance_timeout_s``) and ends by itself.

It owns: the maintenance file in the state directory (who suspended, since
when, until when; kept across agent restarts, since a switchover may be
half-way) and whether maintenance is in force now.
It may not: decide anything else, nor read the clocks itself (they are passed
in, so its rules are testable). While the agent runs, the deadline is kept on
the monotonic clock: a wall-clock step neither ends nor extends maintenance.
The file's wall-clock time is for people and for the next agent start.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from standby.agent.store import _atomic_write


@dataclass(frozen=True)
class Maintenance:
    by: str  # who suspended: "api" (a person or `standby switchover`), "rejoin", ...
    since: float  # wall clock, seconds since the epoch
    until: float  # wall clock, seconds since the epoch

    def view(self, wall_now: float) -> dict[str, object]:
        return {"by": self.by, "since": _iso(self.since), "until": _iso(self.until),
                "remaining_s": max(0, round(self.until - wall_now))}


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


class MaintenanceFile:
    def __init__(self, path: Path, limit_s: float, wall: Callable[[], float] = time.time,
                 mono: Callable[[], float] = time.monotonic) -> None:
        self.path, self.limit_s, self.wall, self.mono = path, limit_s, wall, mono
        self.current: Maintenance | None = None
        self._deadline: float | None = None  # monotonic

    def load(self) -> None:
        """At agent start: the file's maintenance, with what is left of it (never more than the limit)."""
        try:
            text = self.path.read_text()
            mtime = self.path.stat().st_mtime
        except FileNotFoundError:
            self.current = self._deadline = None
            return
        try:
            raw = json.loads(text)
            m = Maintenance(str(raw["by"]), float(raw["since"]), float(raw["until"]))
        except (ValueError, KeyError, TypeError):
            # Written by an older agent without a deadline: it runs from the file's time.
            m = Maintenance("unknown (no deadline recorded)", mtime, mtime + self.limit_s)
        self.current = m
        self._deadline = self.mono() + min(self.limit_s, max(0.0, m.until - self.wall()))

    def start(self, by: str) -> Maintenance:
        now = self.wall()
        m = Maintenance(by, now, now + self.limit_s)
        _atomic_write(self.path, json.dumps(asdict(m)).encode(), sync=True)
        self.current, self._deadline = m, self.mono() + self.limit_s
        return m

    def end(self) -> Maintenance | None:
        m, self.current, self._deadline = self.current, None, None
        self.path.unlink(missing_ok=True)
        return m

    def active(self) -> bool:
        return self._deadline is not None and self.mono() < self._deadline

    def expire(self) -> Maintenance | None:
        """End a maintenance whose deadline passed; the ended one (for the record), else None."""
        if self.current is not None and not self.active():
            return self.end()
        return None
