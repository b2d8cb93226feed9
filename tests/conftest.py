"""Test-wide settings."""

from __future__ import annotations

import os

from hypothesis import settings

# Under pytest-xdist, tests marked `alone` run with no other test beside them (tests/gate.py).
from tests.gate import pytest_configure, pytest_runtest_protocol, pytest_unconfigure

__all__ = ["pytest_configure", "pytest_runtest_protocol", "pytest_unconfigure"]

# In CI the property tests explore a fixed, reproducible set of examples (a red
# run can be replayed exactly); locally they keep searching new ones every run.
settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI", "").lower() == "true":
    settings.load_profile("ci")
