"""Real-time scheduling for the agent process.

A primary whose agent is starved of CPU keeps its PostgreSQL accepting writes
while its heartbeats stop, so the standby may take over before the starved
agent gets to fence (in sync mode those writes are never acknowledged, but
for a moment both servers take them). Cluster managers run their heartbeat
at a real-time priority for this reason; so does the agent, round-robin at a
modest level. Processes it starts (PostgreSQL, the services) go back to
normal scheduling (SCHED_RESET_ON_FORK), so a busy database cannot starve
the machine. It owns the process's scheduling class; it may not change anything else.
"""

from __future__ import annotations

import os

_granted = 0  # the priority this process runs at, once raised


def raise_priority(priority: int) -> tuple[bool, str]:
    """Switch the calling thread to SCHED_RR; (done, what happened). Worker threads call ``follow``."""
    global _granted
    if priority <= 0:
        return False, "normal scheduling (timings.realtime_priority = 0)"
    try:
        _apply(priority)
    except OSError as e:
        return False, (f"normal scheduling: real-time priority {priority} refused ({e.strerror}); "
                       "run the agent as root or with CAP_SYS_NICE, or set timings.realtime_priority = 0")
    _granted = priority
    return True, f"real-time round-robin scheduling, priority {priority}"


def follow() -> None:
    """In a new worker thread: the process's priority (a new thread starts at normal scheduling,
    because of SCHED_RESET_ON_FORK). The step waits on these threads, so they must not starve."""
    if _granted:
        _apply(_granted)


def _apply(priority: int) -> None:
    os.sched_setscheduler(0, os.SCHED_RR | os.SCHED_RESET_ON_FORK, os.sched_param(priority))
