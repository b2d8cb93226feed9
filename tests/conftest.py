"""Test-wide settings."""

from __future__ import annotations

import os
from collections.abc import Generator
from typing import Any

import pytest
from hypothesis import settings

# Under pytest-xdist, tests marked `alone` run with no other test beside them (tests/gate.py).
from tests.gate import pytest_configure, pytest_runtest_protocol, pytest_unconfigure

__all__ = ["pytest_configure", "pytest_runtest_makereport", "pytest_runtest_protocol", "pytest_unconfigure"]

CI = os.environ.get("CI", "").lower() == "true"

# In CI the property tests explore a fixed, reproducible set of examples (a red
# run can be replayed exactly); locally they keep searching new ones every run.
settings.register_profile("ci", derandomize=True, print_blob=True)
if CI:
    settings.load_profile("ci")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, None]:
    """In CI a skipped test fails: `./dev setup` installs everything the suite needs, so a skip there means a
    machine that could not do its part (a container that did not boot in time, a package that would not
    install), and a run that skips what it could not do would pass without having tested it."""
    outcome = yield
    report = outcome.get_result()
    if CI and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped in CI ({reason}): CI must not pass by skipping"
