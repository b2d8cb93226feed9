"""Reachability probes: is an address answering on this network?"""

from __future__ import annotations

import shutil
import subprocess


def ping(address: str, timeout_s: float = 1.0, count: int = 1) -> bool:
    """ICMP echo via the system's ping (raw sockets need privileges it already has)."""
    exe = shutil.which("ping")
    if exe is None:
        raise RuntimeError("ping not found: apt-get install iputils-ping")
    wait = max(1, round(timeout_s))
    res = subprocess.run([exe, "-n", "-q", "-c", str(count), "-W", str(wait), address],
                         capture_output=True, timeout=wait * count + 5, check=False)
    return res.returncode == 0

