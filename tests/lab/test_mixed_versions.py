"""Issue 11: a rolling upgrade of standby itself. One node's agent runs the previous release's code, taken
from git (tests/unit/test_versions_previous.PREVIOUS), while the other runs the current code: a switchover
and a failover work across the two, nothing acknowledged is lost, no two primaries are ever seen,
`standby check` reads both agents, and the current release then takes over the previous one's state.
"""

from __future__ import annotations

import json
import subprocess
import sys
import sysconfig
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from standby.lab import Lab
from standby.lab.pair import agent_state, holders, primaries, under_load, wait_ready
from tests.lab.test_failover import no_loss_no_dual, settle
from tests.unit.test_versions_previous import previous_source


@pytest.fixture(scope="module")
def previous_standby(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The previous release's `standby`: its source from git in a virtualenv of its own that finds the
    current installation's dependencies but not the current package (so its supervisor, its fence and
    everything it runs stay on the old code)."""
    d = tmp_path_factory.mktemp("previous-release")
    src = previous_source(d)  # PREVIOUS: which commit, and why, is said there
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(d / "venv")], check=True)
    python = d / "venv" / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    # Its source first; then the current environment's packages as a plain directory (its .pth files,
    # the current package's among them, are not read from there).
    (Path(site) / "previous-release.pth").write_text(f"{src}\n{sysconfig.get_paths()['purelib']}\n")
    exe = d / "venv" / "bin" / "standby"
    exe.write_text(f"#!{python}\nfrom standby.cli.main import main\n\nmain()\n")
    exe.chmod(0o755)
    where = subprocess.run([str(python), "-c", "import standby; print(standby.__file__)"],
                           capture_output=True, text=True, check=True).stdout.strip()
    assert where.startswith(str(src)), where
    yield exe


def start_agent_from(lab: Lab, node: str, exe: Path) -> None:
    """As Lab.start_agent, with another installation's `standby`."""
    lab.spawn(node, [str(exe), "agent", "--respawn", "-v", "--config", str(lab.config_path), "--node", node], "agent")


def streaming_and_eligible(lab: Lab, node: str) -> bool:
    st = agent_state(lab, node)
    return bool(st) and st["postgres"]["state"] == "standby" and st["postgres"]["streaming"] and st["state"]["eligible"]


@pytest.mark.parametrize("previous_on", ["alpha", "beta"])
def test_i11_agents_one_release_apart_switch_over_and_fail_over(
        lab_factory, previous_standby: Path, previous_on: str, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    lab = lab_factory("sync")
    lab.bootstrap()
    for node in ("alpha", "beta"):
        if node == previous_on:
            start_agent_from(lab, node, previous_standby)
        else:
            lab.start_agent(node)
    wait_ready(lab)
    pid = lab.agent_pid(previous_on)
    assert pid is not None and str(previous_standby) in Path(f"/proc/{pid}/cmdline").read_text()
    current = "beta" if previous_on == "alpha" else "alpha"
    # The current agent reads the previous one's heartbeats: none refused as another protocol.
    assert "protocol" not in agent_state(lab, current)["heartbeats"]["rejected"]

    check = lab.standby(current, "check", "--json", check=False)
    items = {i["check"]: i for i in json.loads(check.stdout)["checks"]}
    assert items["standby version"]["verdict"] == "pass", items["standby version"]
    assert items["postgresql major version"]["verdict"] == "pass"

    with under_load(lab, tmp_path) as run:
        # Switchover, run by the current command line: alpha steps down, beta takes over.
        res = lab.standby("alpha", "switchover", check=False)
        assert res.returncode == 0, res.stdout + res.stderr
        assert primaries(lab) == ["beta"] and holders(lab) == ["beta"]
        lab.wait_for("alpha streaming from beta, eligible", lambda: streaming_and_eligible(lab, "alpha"), timeout_s=30)
        time.sleep(1.0)
        # Failover: beta's PostgreSQL dies, alpha's agent promotes and takes the services.
        lab.kill_postgres("beta")
        settle(lab, db="alpha", services="alpha")
        time.sleep(1.0)
    assert agent_state(lab, "beta")["state"]["fenced"] is True
    no_loss_no_dual(lab, run, on="alpha")
    assert run.verdict["acked"] > 0

    # The upgrade itself: the current release takes over the previous one's state on that node.
    before = agent_state(lab, previous_on)["state"]
    lab.stop_agent(previous_on)
    lab.start_agent(previous_on)
    lab.wait_for(f"{previous_on}'s upgraded agent to answer", lambda: agent_state(lab, previous_on), timeout_s=30)
    time.sleep(3.0)  # a few decision steps on the state it took over
    after = agent_state(lab, previous_on)["state"]
    assert (after["term"], after["fenced"]) == (before["term"], before["fenced"])
    assert primaries(lab) == ["alpha"] and holders(lab) == ["alpha"]
