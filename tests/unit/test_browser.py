"""The tests' browser cleans up after itself: Chromium leaves a directory for its singleton socket under
TMPDIR on every start (CI runs 63-65 left three each in /tmp), so the browser is given its own."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest

from tests.browser import browser_in

pytestmark = pytest.mark.alone  # a browser loads the machine (tests/gate.py)


def test_ci65_the_browser_leaves_nothing_in_the_temporary_directory(monkeypatch: pytest.MonkeyPatch) -> None:
    # A short temporary directory of the test's own (not tmp_path): a Unix socket's path must fit 108 bytes.
    tmp = Path(tempfile.mkdtemp(prefix="browser-test-"))
    try:
        monkeypatch.setattr(tempfile, "tempdir", str(tmp))
        gen = browser_in(None)
        b = next(gen)
        try:
            b(b.driver.get, "data:text/html,<p id=x>here</p>")
            assert b.text("#x") == "here"
            home = Path(b.home)
            # Chromium honoured the browser's own TMPDIR: its singleton directory is there, not in the system's.
            assert home.parent == tmp and any(home.glob("org.chromium.Chromium.*")), sorted(home.iterdir())
        finally:
            gen.close()
        assert list(tmp.iterdir()) == []
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
