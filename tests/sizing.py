"""How long the soak-like tests hold a fault, and how many examples the costliest property tests draw: the
full figure locally, a smaller one in CI (CI=true).

CI runs the whole suite on every landing within a time budget; there a shorter hold still draws the fault
many heartbeat intervals over (a 200 ms interval: 8 s is 40 of them), while a local run keeps the full
length. CI's Hypothesis profile is derandomized (tests/conftest.py), so each CI run draws the same examples
anyway; the local runs keep drawing new ones. Only holds, campaign lengths and example counts are sized:
never a timeout the product must meet.
"""

from __future__ import annotations

import os

IN_CI = os.environ.get("CI", "").lower() == "true"


def hold_s(full: float, ci: float) -> float:
    """``full`` seconds locally, ``ci`` in CI."""
    return ci if IN_CI else full


def examples(full: int, ci: int) -> int:
    """``full`` Hypothesis examples locally, ``ci`` in CI."""
    return ci if IN_CI else full
