"""The agent shell's findings on a real pair: a slow PostgreSQL on the primary is not a crashed one (M3)."""

from __future__ import annotations

import os
import signal
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest

from standby.lab import Lab
from standby.lab.pair import agent_state, holders, primaries, role_changes, start_pair, under_load, verify
from standby.observe.postgres import AGENT_APPLICATION_NAME


@pytest.fixture
def pair(lab_factory) -> Lab:  # type: ignore[no-untyped-def]
    return start_pair(lab_factory("sync"))


def agent_backend(lab: Lab, node: str) -> int:
    def find() -> int | None:
        with lab.pg_connect(node) as c:
            row = c.execute("SELECT pid FROM pg_stat_activity WHERE application_name = %s",
                            (AGENT_APPLICATION_NAME,)).fetchone()
        return row[0] if row else None

    return lab.wait_for(f"{node}'s agent connection", find, timeout_s=10)  # type: ignore[no-any-return]


def test_m3_agent_backend_stopped_on_the_primary_changes_no_role(pair: Lab, tmp_path: Path) -> None:
    """The agent's own query on the primary hangs for 3.5 s (its backend stopped), then times out:
    the primary is busy, not gone. Nobody fails over, nobody fences, no acknowledged call is lost."""
    since = datetime.now(timezone.utc).isoformat(timespec="milliseconds")
    with under_load(pair, tmp_path) as run:
        pid = agent_backend(pair, "alpha")
        run.t_fault = time.monotonic()
        os.kill(pid, signal.SIGSTOP)
        try:
            time.sleep(3.5)
        finally:
            os.kill(pid, signal.SIGCONT)
        time.sleep(3.0)  # the cancelled query and the reconnection after it
    assert role_changes(pair, "alpha", since) == [] and role_changes(pair, "beta", since) == []
    assert primaries(pair) == ["alpha"] and holders(pair) == ["alpha"]
    state = agent_state(pair, "alpha")
    assert state["state"]["fenced"] is False and state["postgres"]["state"] == "primary"
    verdict = verify(pair, run, on="alpha")
    assert verdict["ok"], verdict["violations"]
    assert verdict["missing_acked"] == []
    assert run.probe is not None and run.probe.samples and run.probe.dual == []
