"""Test-wide settings."""

from __future__ import annotations

import os

from hypothesis import settings

# In CI the property tests explore a fixed, reproducible set of examples (a red
# run can be replayed exactly); locally they keep searching new ones every run.
settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI", "").lower() == "true":
    settings.load_profile("ci")
