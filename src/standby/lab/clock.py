"""Step a lab node's wall clock under its running agent, with Debian's libfaketime.

Only the wall clock moves (FAKETIME_DONT_FAKE_MONOTONIC): that is what an NTP
step or an operator's `date -s` does to a real server, and the agent's timers
must not notice. The offset lives in a file that libfaketime re-reads at most
once a second, so a jump reaches a running process without restarting it.
Processes the agent starts (PostgreSQL, the services) inherit it, as they
would share a real host's clock.

libfaketime 0.9.10 makes a semaphore and a segment in /dev/shm for every
process it starts in that was not handed its parent's (FAKETIME_DISABLE_SHM
does not stop that), named after the process's pid, and removes them only when
that process exits normally as their maker: a killed process, a crashed host
and every Python process here (see faketime_site) leave them behind. So such a
process tree gets a /dev/shm of its own, a tmpfs in a mount namespace of its
own, mounted before libfaketime is loaded: the host's /dev/shm never sees them,
and the tmpfs goes away with the last process in it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
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
        # No shared-memory semaphore: PostgreSQL, started as another user, could not open root's. (0.9.10 makes
        # one per process all the same: hence the /dev/shm of its own.)
        "FAKETIME_DISABLE_SHM": "1",
        "PYTHONPATH": python_path,
    }


# Runs as root inside the namespace `unshare` made, before libfaketime is loaded (`env` loads it for
# the program); a slave of the host's mounts, as `ip netns exec` makes them, so later lab mounts show.
_OWN_SHM = 'mount -t tmpfs -o mode=1777,size=16m,nosuid,nodev standby-faketime /dev/shm && exec env "$@"'


def command(node_dir: Path, argv: Sequence[str]) -> list[str]:
    """``argv`` with its wall clock following the node's offset file and a /dev/shm of its own (see above);
    the same process all along (no fork), so a pid recorded for it stays the program's."""
    env = environment(node_dir)
    return ["unshare", "--mount", "--propagation", "slave", "sh", "-c", _OWN_SHM, "sh",
            *(f"{k}={v}" for k, v in env.items()), *argv]


def set_offset(node_dir: Path, seconds: int) -> None:
    """Step the node's wall clock to real time + ``seconds`` (atomically: a reader never sees half a file)."""
    path = offset_file(node_dir)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(f"{seconds:+d}\n")
    tmp.chmod(0o644)
    os.replace(tmp, path)
