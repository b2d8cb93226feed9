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
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

# Popen as the supervisor calls it, with the stop arriving while the agent is being started (before the
# supervisor knows its child): the adversarial read of the waitpid change, finding 1.
_STOP_WHILE_STARTING = """
import os, signal, subprocess
import standby.supervisor as sup
real = subprocess.Popen
def starting(*a, **k):
    os.kill(os.getpid(), signal.SIGTERM)
    return real(*a, **k)
sup.subprocess.Popen = starting
"""


def _supervisor(tmp_path: Path, agent: str, stop_timeout_s: float, prelude: str = "") -> subprocess.Popen[bytes]:
    """A supervisor (in a session of its own) running ``agent`` (sh) once it has written its PID (``started``)."""
    pidfile = tmp_path / "agent.pid"
    code = (prelude + "\nimport json, sys; from standby.supervisor import supervise; "
            f"supervise(json.loads(sys.argv[1]), ['true'], stop_timeout_s={stop_timeout_s})")
    argv = ["sh", "-c", f"echo $$ > {pidfile}.new; mv {pidfile}.new {pidfile}; {agent}"]
    return subprocess.Popen([sys.executable, "-c", code, json.dumps(argv)], start_new_session=True)


def _started(tmp_path: Path) -> int:
    pidfile, deadline = tmp_path / "agent.pid", time.monotonic() + 10
    while not pidfile.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert pidfile.exists(), "the agent never started"
    return int(pidfile.read_text())


@contextmanager
def _running(sup: subprocess.Popen[bytes]) -> Iterator[subprocess.Popen[bytes]]:
    try:
        yield sup
    finally:
        if sup.poll() is None:
            os.killpg(sup.pid, signal.SIGKILL)
            sup.wait(10)


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
    with _running(_supervisor(tmp_path, "exec sleep 60", 5)) as sup:
        _started(tmp_path)
        before = _switches(sup.pid)
        time.sleep(1.0)
        # Asleep in waitpid: not woken at all (a poll every 50 ms was 20 or more a second).
        assert _switches(sup.pid) - before <= 2


@pytest.mark.parametrize(("agent", "stop_timeout_s"), [
    # Ignores the stop: killed at the deadline, then the fence runs and the supervisor ends.
    ("trap '' TERM; while :; do sleep 0.1; done", 1),
    # Stops when asked: a deadline of 300 s, and the supervisor ends with the agent, not with the deadline.
    ("exec sleep 60", 300),
])
def test_a_stop_ends_the_agent_and_then_the_supervisor(tmp_path: Path, agent: str, stop_timeout_s: float) -> None:
    with _running(_supervisor(tmp_path, agent, stop_timeout_s)) as sup:
        pid = _started(tmp_path)
        sup.send_signal(signal.SIGTERM)
        assert sup.wait(15) == 0
        assert not _alive(pid)


def test_finding_1_a_stop_while_the_agent_starts_is_passed_on(tmp_path: Path) -> None:
    """The request came before the supervisor had a child to pass it on to: it must reach the new agent (the
    supervisor waited for the agent's own end before, here 60 s), which may end before it has even begun."""
    with _running(_supervisor(tmp_path, "exec sleep 60", 300, prelude=_STOP_WHILE_STARTING)) as sup:
        assert sup.wait(15) == 0


def test_finding_2_stops_asked_again_and_again_do_not_put_off_the_deadline(tmp_path: Path) -> None:
    with _running(_supervisor(tmp_path, "trap '' TERM; while :; do sleep 0.1; done", 2)) as sup:
        pid = _started(tmp_path)
        deadline = time.monotonic() + 15
        while sup.poll() is None and time.monotonic() < deadline:
            sup.send_signal(signal.SIGTERM)  # a manager asking every half second
            time.sleep(0.5)
        assert sup.poll() == 0, "the agent was never killed: each request put the deadline off"
        assert not _alive(pid)
