"""Loaded at start-up by Python processes that run under the lab's libfaketime (see standby.lab.clock).

time.sleep goes through clock_nanosleep with an absolute monotonic deadline,
which libfaketime 0.9.10 turns into an invalid request when it is told to leave
the monotonic clock alone. A timed wait on an event sleeps on the same
monotonic clock through another call, which it passes through untouched.
"""

import threading
import time


def _sleep(seconds: float) -> None:
    if seconds < 0:
        raise ValueError("sleep length must be non-negative")
    threading.Event().wait(seconds)


time.sleep = _sleep
