"""How long the soak-like tests hold a fault: their full length locally, shorter in CI (CI=true).

CI runs the whole suite on every landing within a time budget; there a shorter hold still draws the fault
many heartbeat intervals over (a 200 ms interval: 8 s is 40 of them), while a local run keeps the full
length. Only holds and campaign lengths are sized: never a timeout the product must meet.
"""

from __future__ import annotations

import os

IN_CI = os.environ.get("CI", "").lower() == "true"


def hold_s(full: float, ci: float) -> float:
    """``full`` seconds locally, ``ci`` in CI."""
    return ci if IN_CI else full
