"""The agent shell's findings on real parts: a slow PostgreSQL on the primary is not a crashed one (M3), and a
fenced node's release and a later take on real kernel addresses (H5)."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest

from standby.lab import Lab, netns
from standby.lab.pair import agent_state, holders, primaries, role_changes, start_pair, under_load, verify
from standby.model import ActionKind
from standby.observe.postgres import AGENT_APPLICATION_NAME
from tests.unit.test_findings_shell import make_agent, run_steps, script


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


def decisions(lab: Lab, node: str, since: str) -> list[str]:
    """What the agent decided since ``since``, but the sync setting (reconciled every step anyway)."""
    res = lab.standby(node, "history", "--json", "--limit", "1000", check=False)
    entries = json.loads(res.stdout) if res.returncode == 0 else []
    return [e["action"] for e in entries
            if e["event"] == "decision" and e["time"] > since and e.get("action") != "set_sync"]


def test_m3_agent_backend_stopped_on_the_primary_changes_no_role(pair: Lab, tmp_path: Path) -> None:
    """The agent's own query on the primary hangs (its backend stopped), then hits statement_timeout:
    the primary is busy, not gone. 2.5 s lets the timeout answer while the agent still waits for it;
    3.5 s outlasts that wait. Nothing is decided (no fence, no restart, no failover), no call is lost."""
    since = datetime.now(timezone.utc).isoformat(timespec="milliseconds")
    with under_load(pair, tmp_path) as run:
        run.t_fault = time.monotonic()
        for stopped_s in (2.5, 2.5, 3.5):
            pid = agent_backend(pair, "alpha")  # a new backend after each cancelled query
            os.kill(pid, signal.SIGSTOP)
            try:
                time.sleep(stopped_s)
            finally:
                os.kill(pid, signal.SIGCONT)
            time.sleep(1.0)
        time.sleep(2.0)
    assert decisions(pair, "alpha", since) == [] and decisions(pair, "beta", since) == []
    assert role_changes(pair, "alpha", since) == [] and role_changes(pair, "beta", since) == []
    assert primaries(pair) == ["alpha"] and holders(pair) == ["alpha"]
    state = agent_state(pair, "alpha")
    assert state["state"]["fenced"] is False and state["postgres"]["state"] == "primary"
    verdict = verify(pair, run, on="alpha")
    assert verdict["ok"], verdict["violations"]
    assert verdict["missing_acked"] == []
    assert run.probe is not None and run.probe.samples and run.probe.dual == []


@pytest.fixture
def node_ns() -> str:  # type: ignore[misc]
    """A namespace with the example configuration's service interface (eth0, one end of a veth pair); removed after."""
    ns = f"sbsh{secrets.token_hex(2)}"
    netns.add(ns)
    try:
        netns.ip_batch(ns, ["link add eth0 type veth peer name peer0", "link set peer0 up", "link set eth0 up",
                             "addr add 192.0.2.11/24 dev eth0"])
        yield ns
    finally:
        netns.delete(ns)


def test_h5_fenced_node_releases_and_a_later_take_leaves_no_address(
        node_ns: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Chaos seed 91, fault #11, on real addresses: fence + release, then a take decided 0.44 s later."""
    agent = make_agent(tmp_path)
    monkeypatch.setattr("standby.act.services.start_all", lambda *a, **kw: [])
    monkeypatch.setattr("standby.act.services.stop_all", lambda *a, **kw: [])
    netns.ip_batch(node_ns, ["addr add 192.0.2.100/24 dev eth0", "addr add 192.0.2.102/24 dev eth0"])
    agent.state = agent.state.__class__(services=True, was_primary=True)
    script(agent, monkeypatch, [({"services": False, "fenced": True}, [ActionKind.FENCE, ActionKind.RELEASE_SERVICES]),
                                ({"services": True}, [ActionKind.TAKE_SERVICES]),
                                ({}, [])])
    # The agent's worker threads start in this thread's namespace, so its netlink and ARP use node_ns.
    netns.call_in(node_ns, lambda: asyncio.run(run_steps(agent, 3, 0.44 / 2)))
    held = netns.addresses(node_ns, "eth0")
    assert not any(a.startswith(("192.0.2.100/", "192.0.2.102/")) for a in held), held
    assert agent.state.services is False
