"""`agent --respawn`'s supervisor waits for its agent asleep, and still keeps the unit's stop deadline.

It used to poll the agent every 50 ms (Popen.wait with a timeout), 0.3 % of a core on every node for its
whole life (issue 13). Now it sleeps in waitpid; a stop request and its deadline arrive as signals."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest


def _supervisor(tmp_path: Path, agent: str, stop_timeout_s: float) -> tuple[subprocess.Popen[bytes], Path]:
    """A supervisor (in a session of its own) running ``agent`` (sh); the agent writes its PID first."""
    pidfile = tmp_path / "agent.pid"
    code = ("import json, sys; from standby.supervisor import supervise; "
            f"supervise(json.loads(sys.argv[1]), ['true'], stop_timeout_s={stop_timeout_s})")
    argv = ["sh", "-c", f"echo $$ > {pidfile}; {agent}"]
    sup = subprocess.Popen([sys.executable, "-c", code, json.dumps(argv)], start_new_session=True)
    deadline = time.monotonic() + 10
    while not (pidfile.exists() and pidfile.read_text().strip()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert pidfile.exists(), "the agent never started"
    return sup, pidfile


def _switches(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("voluntary_ctxt_switches:"):
            return int(line.split()[1])
    raise AssertionError("no voluntary_ctxt_switches")


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def test_the_supervisor_sleeps_while_its_agent_runs(tmp_path: Path) -> None:
    sup, _ = _supervisor(tmp_path, "exec sleep 60", stop_timeout_s=5)
    try:
        before = _switches(sup.pid)
        time.sleep(1.0)
        # Asleep in waitpid: not woken at all (a poll every 50 ms was 20 or more a second).
        assert _switches(sup.pid) - before <= 2
    finally:
        os.killpg(sup.pid, signal.SIGKILL)
        sup.wait(10)


@pytest.mark.parametrize(("agent", "stop_timeout_s"), [
    # Ignores the stop: killed at the deadline, then the fence runs and the supervisor ends.
    ("trap '' TERM; while :; do sleep 0.1; done", 1),
    # Stops when asked: a deadline of 300 s, and the supervisor ends with the agent, not with the deadline.
    ("exec sleep 60", 300),
])
def test_a_stop_ends_the_agent_and_then_the_supervisor(tmp_path: Path, agent: str, stop_timeout_s: float) -> None:
    sup, pidfile = _supervisor(tmp_path, agent, stop_timeout_s)
    pid = int(pidfile.read_text())
    try:
        sup.send_signal(signal.SIGTERM)
        assert sup.wait(15) == 0
        assert not _alive(pid)
    finally:
        if sup.poll() is None:
            os.killpg(sup.pid, signal.SIGKILL)
            sup.wait(10)
