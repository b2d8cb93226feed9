"""Debian packages a test needs: installed when missing (as root), or the test skips saying why."""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
from pathlib import Path

import pytest

_tried: dict[tuple[str, ...], str | None] = {}
# Test processes running side by side (pytest-xdist) install one at a time: a second apt-get beside a
# running one fails at once on dpkg's lock. Anyone else's apt-get is waited for (DPkg::Lock::Timeout).
APT_LOCK = Path("/run/lock/standby-tests-apt.lock")


def _install(packages: tuple[str, ...]) -> str | None:
    """None on success, else why not."""
    if os.geteuid() != 0:
        return "not root"
    fd = os.open(APT_LOCK, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        return _apt_install(packages)
    finally:
        os.close(fd)


def _apt_install(packages: tuple[str, ...]) -> str | None:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    cmd = ["apt-get", "install", "-o", "DPkg::Lock::Timeout=600", "-y", "-qq", "--no-install-recommends", *packages]
    for attempt in range(2):
        r = subprocess.run(cmd, check=False, capture_output=True, text=True, env=env, timeout=900)
        if r.returncode == 0:
            return None
        if attempt == 0:  # the package lists may be missing or old
            subprocess.run(["apt-get", "update", "-qq"], check=False, capture_output=True, env=env, timeout=600)
    return (r.stderr or r.stdout).strip().splitlines()[-1] if (r.stderr or r.stdout).strip() else f"exit {r.returncode}"


def need(binary: str, *packages: str) -> str:
    """The path of ``binary``, installing ``packages`` first if it is missing; skips the test if that fails."""
    path = shutil.which(binary)
    if path is None:
        if packages not in _tried:
            _tried[packages] = _install(packages)
        path = shutil.which(binary)
        if path is None:
            pytest.skip(f"{binary} is missing and `apt-get install {' '.join(packages)}` failed: {_tried[packages]}")
    return path
