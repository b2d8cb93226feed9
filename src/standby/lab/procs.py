"""Long-running background processes started inside a lab namespace.

Each process is detached (new session, re-parented to init) so it outlives
the command that started it and leaves no zombie behind; its pid is kept in a
pid file so it can be stopped later by name.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from standby.lab import netns
from standby.lab.errors import LabError

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")

# The shell records its own pid (atomically, via rename) and then becomes the
# program, so the recorded pid is the program's.
_LAUNCHER = 'echo $$ > "$0.tmp" && mv "$0.tmp" "$0" && exec "$@"'


def check_name(name: str) -> None:
    if not _NAME_RE.match(name):
        raise LabError(f"process name {name!r}: expected letters, digits, '_', '.' or '-'")


def _same_netns(pid: int, ns: str) -> bool:
    """Guards against signalling a recycled pid that now belongs to someone else."""
    try:
        return os.stat(f"/proc/{pid}/ns/net").st_ino == os.stat(netns.NETNS_DIR / ns).st_ino
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return False


def spawn(
    ns: str,
    argv: Sequence[str],
    log_path: Path,
    pid_path: Path,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    timeout_s: float = 10.0,
) -> int:
    if not argv:
        raise LabError("spawn: empty command")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    pid_path.parent.mkdir(parents=True, exist_ok=True)
    pid_path.unlink(missing_ok=True)
    with open(log_path, "ab") as log:
        launcher = subprocess.Popen(
            netns.in_netns(ns, ["setsid", "-f", "sh", "-c", _LAUNCHER, str(pid_path), *argv]),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            env=dict(env) if env is not None else None,
            cwd=cwd,
        )
    launcher.wait(timeout=timeout_s)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        text = pid_path.read_text().strip() if pid_path.exists() else ""
        if text.isdigit():
            return int(text)
        time.sleep(0.01)
    raise LabError(f"{argv[0]} did not start in namespace {ns}; see {log_path}")


def read_pid(pid_path: Path) -> int | None:
    try:
        text = pid_path.read_text().strip()
    except FileNotFoundError:
        return None
    return int(text) if text.isdigit() else None


def alive(ns: str, pid_path: Path) -> bool:
    pid = read_pid(pid_path)
    return pid is not None and _same_netns(pid, ns)


def stop(ns: str, pid_path: Path, timeout_s: float = 5.0) -> None:
    """SIGTERM the process group, SIGKILL it if it lingers, then forget the pid."""
    pid = read_pid(pid_path)
    if pid is not None and _same_netns(pid, ns):
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(pid, signal.SIGCONT)  # a frozen process cannot act on SIGTERM
                os.killpg(pid, sig)
            except ProcessLookupError:
                break
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline and _same_netns(pid, ns):
                time.sleep(0.02)
            if not _same_netns(pid, ns):
                break
    pid_path.unlink(missing_ok=True)
