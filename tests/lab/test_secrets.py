"""No secret in any output of a real pair: logs, histories, state, command output, status JSON.

Every lab fixture also searches its lab's files at teardown (tests/lab/conftest.py);
this test adds what is not kept on disk (command output) and checks the search itself.
"""

from __future__ import annotations

import json
import subprocess
import sys

from standby.lab import Lab
from standby.lab.pair import STANDBY, agent_state, start_pair
from standby.lab.topology import SECRET_FILES

WRONG_PASSWORD = "Wr0ng-pa55word-that-must-not-be-echoed"

# A real libpq failure with a password in the connection parameters: wrong password, then a closed port.
_CONNECT_FAILS = """
import sys, psycopg
for port in (5432, 1):
    try:
        psycopg.connect(host=sys.argv[1], port=port, user="replicator", password=sys.argv[2], dbname="postgres",
                        connect_timeout=2)
    except psycopg.Error as e:
        print(e)
"""


def _secrets(lab: Lab) -> dict[str, str]:
    return {n: lab.spec.secret(n).read_text().strip() for n in SECRET_FILES}


def test_no_secret_in_any_output(lab_factory) -> None:  # type: ignore[no-untyped-def]
    lab = start_pair(lab_factory("sync"))
    outputs: list[tuple[str, subprocess.CompletedProcess[str]]] = []

    def run(node: str, *args: str) -> subprocess.CompletedProcess[str]:
        res = lab.standby(node, *args, check=False)
        outputs.append((f"{node}: standby {' '.join(args)}", res))
        return res

    for node in ("alpha", "beta"):
        assert run(node, "status", "--json").returncode == 0
        run(node, "status")
        run(node, "history", "--json", "--limit", "1000")
        run(node, "check")
        run(node, "dsn", "--for", "writes", "--dbname", "softswitch")
        outputs.append((f"{node}: GET /status", subprocess.CompletedProcess([], 0, json.dumps(agent_state(lab, node)), "")))
    outputs.append(("config check", subprocess.run([STANDBY, "config", "check", str(lab.config_path)],
                                                   capture_output=True, text=True)))
    res = run("alpha", "switchover")
    assert res.returncode == 0, res.stderr
    lab.wait_for("beta serving after the switchover",
                 lambda: agent_state(lab, "beta").get("state", {}).get("services"), timeout_s=30)
    for node in ("alpha", "beta"):
        run(node, "status", "--json")
        run(node, "history")
    failed = lab.run("beta", [sys.executable, "-c", _CONNECT_FAILS, "198.51.100.11", WRONG_PASSWORD], check=False)
    outputs.append(("psycopg connection errors", failed))
    assert "password authentication failed" in failed.stdout, failed.stdout + failed.stderr

    secrets = _secrets(lab) | {"wrong password": WRONG_PASSWORD}
    leaks = [f"{what} ({stream}): {name}" for what, res in outputs for stream, text in (("stdout", res.stdout),
                                                                                      ("stderr", res.stderr))
             for name, value in secrets.items() if value in (text or "")]
    assert leaks == [], leaks
    assert lab.secret_leaks() == []


def test_leak_search_finds_a_planted_secret(lab_factory) -> None:  # type: ignore[no-untyped-def]
    """The teardown search really looks: a key written into an agent's log is found with its line."""
    lab = lab_factory("sync")
    log = lab.spec.role_dir("beta") / "log" / "agent.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text("started\nkey is " + _secrets(lab)["heartbeat.key"] + "\n")
    try:
        assert lab.secret_leaks() == [f"{log}:2: heartbeat.key"]
    finally:
        log.unlink()
    assert lab.secret_leaks() == []
