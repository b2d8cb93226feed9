"""Step a lab node's wall clock under its running agent, with Debian's libfaketime.

Only the wall clock moves (FAKETIME_DONT_FAKE_MONOTONIC): that is what an NTP
step or an operator's `date -s` does to a real server, and the agent's timers
must not notice. The offset lives in a file that libfaketime re-reads at most
once a second, so a jump reaches a running process without restarting it.
Processes the agent starts (PostgreSQL, the services) inherit it, as they
would share a real host's clock.
"""

from __future__ import annotations

import os
from pathlib import Path

from standby.lab.errors import PrerequisiteMissing

LIBFAKETIME = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1")
# libfaketime 0.9.10 breaks clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME) when
# the monotonic clock is left alone, and Python 3.11's time.sleep uses exactly
# that: this directory's sitecustomize gives such processes a working sleep.
SITE_DIR = Path(__file__).with_name("faketime_site")


def offset_file(node_dir: Path) -> Path:
    return node_dir / "clock.offset"


def environment(node_dir: Path) -> dict[str, str]:
    """Environment for a process whose wall clock follows the node's offset file (created at +0)."""
    if not LIBFAKETIME.exists():
        raise PrerequisiteMissing(f"{LIBFAKETIME} not found; install it with: apt-get install faketime")
    path = offset_file(node_dir)
    if not path.exists():
        set_offset(node_dir, 0)
    python_path = os.pathsep.join(p for p in (str(SITE_DIR), os.environ.get("PYTHONPATH", "")) if p)
    return {
        "LD_PRELOAD": str(LIBFAKETIME),
        "FAKETIME_TIMESTAMP_FILE": str(path),
        "FAKETIME_DONT_FAKE_MONOTONIC": "1",
        # Its built-in monotonic fix starves threads waiting on a lock for about a
        # second (a stall the agent rightly fences for); the wall clock is unaffected.
        "FAKETIME_FORCE_MONOTONIC_FIX": "0",
        "FAKETIME_CACHE_DURATION": "1",
        # No shared-memory semaphore: PostgreSQL, started as another user, could not open root's.
        "FAKETIME_DISABLE_SHM": "1",
        "PYTHONPATH": python_path,
    }


def set_offset(node_dir: Path, seconds: int) -> None:
    """Step the node's wall clock to real time + ``seconds`` (atomically: a reader never sees half a file)."""
    path = offset_file(node_dir)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(f"{seconds:+d}\n")
    tmp.chmod(0o644)
    os.replace(tmp, path)
