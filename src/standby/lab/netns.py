"""Network namespace and link plumbing, done with iproute2.

Every interface is created inside a lab namespace (veth pairs are created in
the switch namespace with their peer placed straight into the node
namespace), so the host's own network is never touched.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from standby.lab.errors import CommandFailed

T = TypeVar("T")

NETNS_DIR = Path("/run/netns")


def run(argv: Sequence[str], check: bool = True, **kw: Any) -> subprocess.CompletedProcess[str]:
    """Run a host command, capturing output; a failure raises with its stderr."""
    kw.setdefault("capture_output", "stdout" not in kw and "stderr" not in kw)
    kw.setdefault("text", True)
    proc = subprocess.run(list(argv), check=False, **kw)
    if check and proc.returncode != 0:
        raise CommandFailed(list(argv), proc.returncode, proc.stdout or "", proc.stderr or "")
    return proc


def in_netns(ns: str, argv: Sequence[str]) -> list[str]:
    return ["ip", "netns", "exec", ns, *argv]


def run_in(ns: str, argv: Sequence[str], check: bool = True, **kw: Any) -> subprocess.CompletedProcess[str]:
    return run(in_netns(ns, argv), check=check, **kw)


def ip_batch(ns: str, commands: Sequence[str]) -> None:
    """Apply several `ip` commands inside ``ns`` in one process."""
    run(["ip", "-n", ns, "-batch", "-"], input="\n".join(commands) + "\n")


def exists(ns: str) -> bool:
    return (NETNS_DIR / ns).exists()


def list_all() -> list[str]:
    try:
        return sorted(p.name for p in NETNS_DIR.iterdir())
    except FileNotFoundError:
        return []


def add(ns: str) -> None:
    run(["ip", "netns", "add", ns])
    ip_batch(ns, ["link set lo up"])


def delete(ns: str) -> None:
    if exists(ns):
        run(["ip", "netns", "delete", ns])


def pids(ns: str) -> list[int]:
    """Processes whose network namespace is ``ns`` (zombies are not listed)."""
    if not exists(ns):
        return []
    out = run(["ip", "netns", "pids", ns], check=False).stdout
    return [int(p) for p in out.split() if p.isdigit()]


def cmdline(pid: int) -> bytes:
    """A process's command line as /proc has it (NUL-separated); empty once it has gone."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except OSError:
        return b""


def signal_all(ns: str, sig: signal.Signals) -> list[int]:
    sent = []
    for pid in pids(ns):
        if pid == os.getpid():
            continue
        try:
            os.kill(pid, sig)
            sent.append(pid)
        except ProcessLookupError:
            pass
    return sent


def kill_all(ns: str, timeout_s: float = 10.0) -> bool:
    """SIGKILL everything in ``ns`` until nothing is left; True when empty."""
    deadline = time.monotonic() + timeout_s
    while True:
        # A stopped process only dies once it runs again.
        signal_all(ns, signal.SIGCONT)
        if not signal_all(ns, signal.SIGKILL):
            return True
        if time.monotonic() > deadline:
            return not pids(ns)
        time.sleep(0.05)


def sysctl(ns: str, key: str, value: str) -> None:
    run_in(ns, ["sysctl", "-q", "-w", f"{key}={value}"])


def read_sysctl(ns: str, key: str) -> str:
    return run_in(ns, ["sysctl", "-n", key]).stdout.strip()


def link_info(ns: str, ifname: str) -> dict[str, Any] | None:
    proc = run(["ip", "-n", ns, "-j", "link", "show", "dev", ifname], check=False)
    if proc.returncode != 0 or not proc.stdout.strip():
        return None
    data = json.loads(proc.stdout)
    return data[0] if data else None


def link_admin_up(ns: str, ifname: str) -> bool:
    info = link_info(ns, ifname)
    return info is not None and "UP" in info.get("flags", [])


def set_link(ns: str, ifname: str, up: bool) -> None:
    ip_batch(ns, [f"link set dev {ifname} {'up' if up else 'down'}"])


def addresses(ns: str, ifname: str) -> list[str]:
    """IPv4 addresses with prefix on ``ifname`` inside ``ns``."""
    proc = run(["ip", "-n", ns, "-j", "-4", "addr", "show", "dev", ifname], check=False)
    if proc.returncode != 0 or not proc.stdout.strip():
        return []
    out = []
    for link in json.loads(proc.stdout):
        for a in link.get("addr_info", []):
            if a.get("family") == "inet":
                out.append(f"{a['local']}/{a['prefixlen']}")
    return out


_libc = None


def call_in(ns: str, fn: Callable[..., T], *args: Any) -> T:
    """Run ``fn(*args)`` in a thread that has entered namespace ``ns``.

    setns(2) changes only the calling thread, and sockets keep the namespace
    they were created in, so the test process can talk to lab addresses
    without a subprocess.
    """
    import concurrent.futures
    import ctypes

    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    libc = _libc

    def target() -> T:
        fd = os.open(NETNS_DIR / ns, os.O_RDONLY)
        try:
            if libc.setns(fd, 0x40000000) != 0:  # CLONE_NEWNET
                raise OSError(ctypes.get_errno(), f"setns into {ns} failed")
        finally:
            os.close(fd)
        return fn(*args)

    # A thread of its own, ended after the call: no other work may run in the namespace it entered.
    # The future hands fn's result or exception (a failed setns too) back to the caller's thread.
    with concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"netns-{ns}") as pool:
        return pool.submit(target).result()
