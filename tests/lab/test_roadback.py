"""The road back on the lab: switchover, rejoin of a failed primary, switchback."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import pytest

from standby.lab import Lab
from standby.lab.pair import agent_state, holders, primaries, start_pair, under_load, verify


@pytest.fixture
def pair(lab_factory) -> Lab:  # type: ignore[no-untyped-def]
    return start_pair(lab_factory("sync"))


def streaming_standby(lab: Lab, node: str) -> bool:
    st = agent_state(lab, node)
    return bool(st) and st["postgres"]["state"] == "standby" and st["postgres"]["streaming"]


def test_switchover_back_and_forth_under_load_loses_nothing(pair: Lab, tmp_path: Path) -> None:
    with under_load(pair, tmp_path) as run:
        for i in range(10):
            new, old = ("beta", "alpha") if i % 2 == 0 else ("alpha", "beta")
            res = pair.standby(old, "switchover", check=False)
            assert res.returncode == 0, res.stdout + res.stderr
            assert primaries(pair) == [new] and holders(pair) == [new]
            pair.wait_for(f"{old} streaming from {new}", lambda: streaming_standby(pair, old), timeout_s=20)
            time.sleep(0.5)
    verdict = verify(pair, run, on="alpha")
    assert verdict["ok"], verdict["violations"]
    assert verdict["acked"] > 0 and run.probe is not None and run.probe.dual == []
    # Back where it started, with sync restored.
    pair.wait_for("beta in sync again", lambda: agent_state(pair, "beta")["state"]["eligible"], timeout_s=20)


def test_switchover_that_cannot_complete_aborts_and_loses_nothing(pair: Lab, tmp_path: Path) -> None:
    with under_load(pair, tmp_path) as run:
        # beta still believes it streams, but no WAL reaches it any more.
        pair.loss("beta", "private", 100)
        res = pair.standby("alpha", "switchover", "--timeout", "3", check=False)
        pair.loss("beta", "private", 0)
        assert res.returncode == 1
        assert "aborted, nothing lost" in res.stderr and "alpha serves again" in res.stderr
        assert primaries(pair) == ["alpha"] and holders(pair) == ["alpha"]
        time.sleep(2.0)
    verdict = verify(pair, run, on="alpha")
    assert verdict["ok"], verdict["violations"]
    assert agent_state(pair, "beta")["postgres"]["state"] == "standby"
    assert agent_state(pair, "alpha")["suspended"] is False and agent_state(pair, "beta")["suspended"] is False


def _pg_control(lab: Lab, node: str) -> str:
    return hashlib.sha256((lab.node(node).pgdata / "global" / "pg_control").read_bytes()).hexdigest()


def test_rejoin_refused_when_unsafe_and_nothing_changes(pair: Lab) -> None:
    # On the live primary: refused, it still accepts writes.
    res = pair.standby("alpha", "rejoin", "--yes", check=False)
    assert res.returncode == 1 and "writable primary" in res.stderr
    # On a streaming standby: nothing to rejoin.
    res = pair.standby("beta", "rejoin", "--yes", check=False)
    assert res.returncode == 1 and "already a standby" in res.stderr
    # After a failover, with the new primary cut off: refused, and the old data untouched.
    pair.crash("alpha")
    pair.wait_for("beta to take over", lambda: primaries(pair) == ["beta"], timeout_s=20)
    pair.heal()
    pair.start_agent("alpha")
    pair.wait_for("alpha's agent to fence it", lambda: agent_state(pair, "alpha").get("state", {}).get("fenced"),
                  timeout_s=20)
    before = _pg_control(pair, "alpha")
    pair.link("beta", "private", False)
    pair.link("beta", "public", False)
    try:
        res = pair.standby("alpha", "rejoin", "--yes", check=False)
    finally:
        pair.heal()
    assert res.returncode == 1 and "unreachable" in res.stderr
    assert _pg_control(pair, "alpha") == before


def test_rejoin_after_failover_then_switchback(pair: Lab, tmp_path: Path) -> None:
    with under_load(pair, tmp_path) as run:
        pair.crash("alpha")
        pair.wait_for("beta to take over", lambda: primaries(pair) == ["beta"] and holders(pair) == ["beta"],
                      timeout_s=20)
        time.sleep(1.0)
        pair.heal()
        pair.start_agent("alpha")
        pair.wait_for("alpha fenced", lambda: agent_state(pair, "alpha").get("state", {}).get("fenced"), timeout_s=20)
        res = pair.standby("alpha", "rejoin", "--yes", check=False)
        assert res.returncode == 0, res.stdout + res.stderr
        assert "rejoined by rewind" in res.stdout or "rejoined by none needed" in res.stdout
        pair.wait_for("alpha streaming and in sync", lambda: streaming_standby(pair, "alpha")
                      and agent_state(pair, "alpha")["state"]["eligible"], timeout_s=30)
        res = pair.standby("beta", "switchback", check=False)
        assert res.returncode == 0, res.stdout + res.stderr
        assert primaries(pair) == ["alpha"] and holders(pair) == ["alpha"]
        pair.wait_for("beta streaming from alpha", lambda: streaming_standby(pair, "beta"), timeout_s=20)
        time.sleep(1.0)
    verdict = verify(pair, run, on="alpha")
    assert verdict["ok"], verdict["violations"]
    assert run.probe is not None and run.probe.dual == []
    again = pair.standby("alpha", "switchback", check=False)
    assert again.returncode == 0 and "nothing to do" in again.stdout
