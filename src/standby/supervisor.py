"""`standby agent --respawn`: the agent under a supervisor that does what systemd's unit does.

A module of its own, importing nothing but the standard library: `agent --respawn` parses its
arguments and then replaces itself (exec, same PID) with ``python -m standby.supervisor``, so the
supervisor that waits beside every agent for the whole life of a node holds no copy of the agent's
libraries.

    python -m standby.supervisor AGENT_ARGV_JSON FENCE_ARGV_JSON
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

STOP_TIMEOUT_S = 30  # the unit's TimeoutStopSec
RESTART_S = 0.2  # the unit's RestartSec


def supervise(agent_argv: list[str], fence_argv: list[str], stop_timeout_s: float = STOP_TIMEOUT_S) -> None:
    """Run the agent as the unit does: after every exit, kill what it left in its process group
    (KillMode=mixed; the group stands for the unit's cgroup, and PostgreSQL, detached by pg_ctl
    into a session of its own, is not in it), then `fence --if-unclean` (ExecStopPost), then
    start it again (Restart=always), unless told to stop or the agent rejected its arguments (2)."""
    child: subprocess.Popen[bytes] | None = None
    stopping = armed = False

    def on_term(signum: int, frame: object) -> None:
        nonlocal stopping, armed
        stopping = True
        if child is not None and child.poll() is None:
            child.send_signal(signal.SIGTERM)
            if not armed:  # the deadline counts from the first request: more of them do not put it off
                armed = True
                signal.setitimer(signal.ITIMER_REAL, stop_timeout_s)  # then SIGKILL (on_alarm), as TimeoutStopSec

    def on_alarm(signum: int, frame: object) -> None:
        if child is not None and child.poll() is None:
            child.kill()

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    signal.signal(signal.SIGALRM, on_alarm)
    while not stopping:
        child = subprocess.Popen(agent_argv)
        if stopping:  # the request came while this agent was being started: it found none to pass on to
            on_term(signal.SIGTERM, None)
        # Asleep in waitpid for the agent's whole life: Popen.wait(timeout) polls every 50 ms, which cost this
        # process 0.3 % of a core on every node; the stop and its deadline come as signals (the handlers above).
        code = child.wait()
        _kill_leftovers()
        # The fence reports its own outcome; the loop restarts the agent whatever it returned.
        subprocess.run(fence_argv, check=False)
        if stopping or code == 2:
            break
        time.sleep(RESTART_S)


def _kill_leftovers() -> None:
    """SIGKILL every other process of this process group (what the agent left behind)."""
    me, group = os.getpid(), os.getpgrp()
    for stat_file in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat_file.read_text().rsplit(")", 1)[1].split()
            pid, pgrp = int(stat_file.parent.name), int(fields[2])
        except (OSError, ValueError, IndexError):
            continue
        if pgrp == group and pid != me:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def exec_supervisor(agent_argv: list[str], fence_argv: list[str]) -> None:
    """Become the supervisor (this process's PID, none of its imports); never returns."""
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, [sys.executable, "-m", "standby.supervisor",
                              json.dumps(agent_argv), json.dumps(fence_argv)])


def _argv(text: str) -> list[str]:
    value = json.loads(text)
    if not isinstance(value, list) or not value or not all(isinstance(a, str) for a in value):
        raise ValueError(f"expected a JSON list of strings, got {text!r}")
    return value


def main(args: list[str]) -> int:
    if len(args) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    try:
        agent_argv, fence_argv = _argv(args[0]), _argv(args[1])
    except ValueError as e:
        print(f"standby.supervisor: {e}", file=sys.stderr)
        return 2
    supervise(agent_argv, fence_argv)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
