"""Loaded (via PYTHONPATH) by Python processes that run under libfaketime in the lab tests.

Debian's libfaketime 0.9.10 rejects the absolute CLOCK_MONOTONIC clock_nanosleep that
time.sleep uses (EINVAL, even with FAKETIME_DONT_FAKE_MONOTONIC): sleep on select's
relative timeout instead, which it passes through.
"""

from __future__ import annotations

import select
import time


def _sleep(seconds: float) -> None:
    if seconds < 0:
        raise ValueError("sleep length must be non-negative")
    select.select([], [], [], seconds)


time.sleep = _sleep
