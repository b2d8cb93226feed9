"""tests/packages.py installs a test's Debian packages when missing. Under pytest-xdist two workers may
need packages at the same moment, and a second apt-get beside a running one fails at once (dpkg's lock):
the test would skip on a fresh machine. Here apt-get is a fake that fails exactly then."""

from __future__ import annotations

import subprocess
import threading
import time
from typing import Any

import pytest

from tests import packages


def test_x3_two_installs_at_once_both_succeed(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    running: list[str] = []
    guard = threading.Lock()

    def fake_apt(argv: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
        with guard:
            busy = bool(running)
            running.append(argv[-1])
        try:
            if busy and "install" in argv:
                return subprocess.CompletedProcess(argv, 100, "", "E: Could not get lock /var/lib/dpkg/lock-frontend")
            time.sleep(1.0 if "install" in argv else 0.05)  # an install outlasts a refresh of the lists
            return subprocess.CompletedProcess(argv, 0, "", "")
        finally:
            with guard:
                running.remove(argv[-1])

    monkeypatch.setattr(packages.os, "geteuid", lambda: 0)
    monkeypatch.setattr(packages.subprocess, "run", fake_apt)
    monkeypatch.setattr(packages, "APT_LOCK", tmp_path / "apt.lock", raising=False)
    results: dict[str, str | None] = {}
    threads = [threading.Thread(target=lambda p=p: results.__setitem__(p, packages._install((p,)))) for p in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert results == {"a": None, "b": None}
