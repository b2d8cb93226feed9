"""Loaded at start-up by Python processes that run under the lab's libfaketime (see standby.lab.clock).

time.sleep goes through clock_nanosleep with an absolute monotonic deadline,
which libfaketime 0.9.10 turns into an invalid request (EINVAL) when it is
told to leave the monotonic clock alone. select's relative timeout sleeps
just as well and passes through untouched.
"""

import operator
import select
import time
from typing import SupportsIndex


def _sleep(seconds: float | SupportsIndex) -> None:
    length = seconds if isinstance(seconds, float) else operator.index(seconds)
    if length < 0:
        raise ValueError("sleep length must be non-negative")
    select.select([], [], [], length)


time.sleep = _sleep
