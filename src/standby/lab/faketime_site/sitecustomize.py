"""Loaded at start-up by Python processes that run under the lab's libfaketime (see standby.lab.clock).

time.sleep goes through clock_nanosleep with an absolute monotonic deadline,
which libfaketime 0.9.10 turns into an invalid request (EINVAL) when it is
told to leave the monotonic clock alone. select's relative timeout sleeps
just as well and passes through untouched.

libfaketime 0.9.10 also creates a semaphore for each process it starts in
(root's, mode 0600) and names it to children in FAKETIME_SHARED; a child that
runs as another user, or outlives that process, cannot open it and exits at
once (chaos seed 103: the agent's `runuser -u postgres` writes during a rejoin
failed after a host crash). Children here keep their own: the wall clock comes
from the node's offset file, nothing needs sharing.
"""

import operator
import os
import select
import time
from typing import SupportsIndex


def _sleep(seconds: float | SupportsIndex) -> None:
    length = seconds if isinstance(seconds, float) else operator.index(seconds)
    if length < 0:
        raise ValueError("sleep length must be non-negative")
    select.select([], [], [], length)


time.sleep = _sleep
os.environ.pop("FAKETIME_SHARED", None)
