"""pg_rewind run with --progress, each of its phases timed from the moment its line arrives.

A rewind's cost is in different places at different sizes (finding the fork, listing both directories,
reading the target's WAL, copying, syncing); the rejoin reports each, so a slow rewind says where.
The parsing is pure (``phases``, ``plan``); ``run`` is the one impure part.
"""

from __future__ import annotations

import os
import pwd
import re
import select
import signal
import subprocess
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum

from standby.salvage import parse_lsn, segment_name


class Phase(StrEnum):
    """pg_rewind's phases, each named by what it does; each ends where the next one's line appears."""

    FORK = "find the fork"  # connect, both control files, timeline histories, the last common checkpoint
    FILE_LISTS = "list both directories"
    TARGET_WAL = "read the target's WAL"
    COPY = "copy"
    CONTROL_FILE = "backup label and control file"
    SYNC = "sync"


# The line that starts each phase after the first (PostgreSQL 15's messages, in English: LC_ALL=C).
_STARTS: tuple[tuple[str, Phase], ...] = (
    ("reading source file list", Phase.FILE_LISTS),
    ("reading WAL in target", Phase.TARGET_WAL),
    ("need to copy", Phase.COPY),
    ("creating backup label and updating control file", Phase.CONTROL_FILE),
    ("syncing target data directory", Phase.SYNC),
)
_COMMON = re.compile(r"rewinding from last common checkpoint at ([0-9A-F]+/[0-9A-F]+) on timeline (\d+)")
_REDO = re.compile(r"CHECKPOINT_(?:ONLINE|SHUTDOWN) redo ([0-9A-F]+/[0-9A-F]+)")
_PLAN = re.compile(r"need to copy (\d+) MB \(total source directory size is (\d+) MB\)")

Stamped = Sequence[tuple[float, str]]  # (seconds since the start, one line of output)


@dataclass(frozen=True)
class RewindRun:
    returncode: int
    output: str
    lines: tuple[tuple[float, str], ...]
    took_s: float


def phases(lines: Stamped, took_s: float) -> list[tuple[Phase, float]]:
    """Each phase that began, with the seconds until the next began (the last: until the run ended)."""
    starts: list[tuple[Phase, float]] = [(Phase.FORK, 0.0)]
    for t, text in lines:
        for marker, phase in _STARTS:
            if marker in text and phase not in (p for p, _ in starts):
                starts.append((phase, t))
    ends = [t for _, t in starts[1:]] + [took_s]
    return [(p, max(0.0, end - t)) for (p, t), end in zip(starts, ends, strict=True)]


def plan(lines: Stamped) -> tuple[int, int] | None:
    """(MB pg_rewind copies, MB of the whole source directory), once it has said so."""
    for _, text in lines:
        if m := _PLAN.search(text):
            return int(m.group(1)), int(m.group(2))
    return None


def describe(lines: Stamped, took_s: float) -> str:
    """One line: what the rewind planned and each phase's seconds."""
    p = plan(lines)
    head = f"{p[0]} MB of the source's {p[1]} MB; " if p else ""
    return head + ", ".join(f"{ph.value} {s:.2f}s" for ph, s in phases(lines, took_s))


def common_checkpoint(output: str) -> tuple[int, int] | None:
    """(LSN, timeline) of the last checkpoint both servers share, as pg_rewind names it."""
    m = _COMMON.search(output)
    return (parse_lsn(m.group(1)), int(m.group(2))) if m else None


def checkpoint_redo(waldump_output: str) -> int | None:
    """The redo LSN in pg_waldump's line for a checkpoint record."""
    m = _REDO.search(waldump_output)
    return parse_lsn(m.group(1)) if m else None


def missing_start(source_wal: Iterable[str], timeline: int, redo: int, segment_size: int) -> str | None:
    """The segment a rewound directory starts replaying from, if the source's pg_wal lacks it; else None.

    pg_rewind makes the target replay from the last common checkpoint's redo, with the source's pg_wal
    (copied) and what the source streams: a segment the source has removed is gone for good, and the
    rewound server waits for it forever. The source serves the redo's segment from the old timeline's
    file, or from a later timeline's when the switch fell in that segment.
    """
    want = segment_name(timeline, redo, segment_size)
    for name in source_wal:
        if len(name) == 24 and name[8:] == want[8:] and int(name[:8], 16) >= timeline:
            return None
    return want


# A dry run has said all a rejoin asks of it (the fork, the common checkpoint, the plan) once it says
# what it would copy; PostgreSQL 15's then fetches every byte of that from the source and discards it.
PLANNED = "need to copy"


def run(user: str, argv: list[str], env: Mapping[str, str], timeout: float, stop_after: str | None = None) -> RewindRun:
    """Run pg_rewind (argv with --progress) as ``user``, stamping each line of its output as it arrives.

    Progress lines end in a carriage return, others in a newline: both end a line here. ``stop_after``:
    end the run (its whole process group) once a line with it arrives; only for a dry run, which
    changes nothing wherever it stops. The return code of a run stopped so is 0.
    """
    full = argv if pwd.getpwuid(os.geteuid()).pw_name == user else ["runuser", "-u", user, "--", *argv]
    t0 = time.monotonic()
    deadline = t0 + timeout
    proc = subprocess.Popen(full, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            env={**os.environ, "LC_ALL": "C", **env}, start_new_session=True)
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    raw, pending, lines = bytearray(), b"", []
    stopped = False
    try:
        while not stopped:
            left = deadline - time.monotonic()
            if left <= 0:
                _kill_group(proc)
                raise subprocess.TimeoutExpired(full, timeout)
            ready, _, _ = select.select([fd], [], [], min(left, 1.0))
            if not ready:
                continue
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            now = time.monotonic() - t0
            raw += chunk
            parts = re.split(rb"[\r\n]", pending + chunk)
            pending = parts.pop()
            lines += [(now, p.decode(errors="replace")) for p in parts if p.strip()]
            stopped = stop_after is not None and any(stop_after in text for _, text in lines)
        if stopped:
            _kill_group(proc)
        code = 0 if stopped else proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        proc.stdout.close()
        if proc.poll() is None:
            _kill_group(proc)
    took = time.monotonic() - t0
    if pending.strip() and not stopped:
        lines.append((took, pending.decode(errors="replace")))
    return RewindRun(code, raw.decode(errors="replace"), tuple(lines), took)


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL to the run's process group: runuser's child too, which a signal to runuser alone would miss."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()
