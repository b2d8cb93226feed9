"""The pair on the distribution's PostgreSQL clusters (`standby lab up --pg-layout cluster`).

Each node runs a postgresql-common cluster (15/<lab>-alpha, 15/<lab>-beta) started with
pg_ctlcluster inside its namespace; standby's settings go to the cluster's conf.d, its replication
lines to the cluster's pg_hba.conf. Failover, switchover and rejoin run as in the plain layout, and
the clusters' own files under /etc stay as the distribution made them. Every lab (with its
clusters) is dropped at the end, also on failure.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from standby.lab import Lab, LabSpec
from standby.lab.pair import agent_state, holders, primaries, start_pair, under_load, verify
from standby.lab.topology import PG_ETC, cluster_for
from tests.lab.conftest import existing_test_labs

# What standby itself writes in a cluster's configuration directory; the rest is the distribution's.
MANAGED = {"conf.d/standby.conf", "pg_hba.conf"}


def _etc_files(lab: Lab, node: str) -> dict[str, str]:
    version, name = cluster_for(lab.name, node).split("/")
    cdir = PG_ETC / version / name
    return {str(p.relative_to(cdir)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(cdir.rglob("*")) if p.is_file() and not p.is_symlink()}


def _lsclusters() -> set[str]:
    out = subprocess.run(["pg_lsclusters", "--no-header"], capture_output=True, text=True, check=True).stdout
    return {"/".join(line.split()[:2]) for line in out.splitlines() if line.strip()}


# Each lab's cluster files as `lab up` left them, before standby touched anything.
_ETC_BEFORE: dict[str, dict[str, dict[str, str]]] = {}


@pytest.fixture
def pair(lab_factory) -> Iterator[Lab]:  # type: ignore[no-untyped-def]
    name = lab_factory.reserve()  # destroyed (clusters dropped) at teardown, also on failure
    lab = Lab.up(LabSpec(name=name, durability="sync", pg_layout="cluster"))
    assert {cluster_for(name, n) for n in ("alpha", "beta")} <= _lsclusters()
    _ETC_BEFORE[name] = {n: _etc_files(lab, n) for n in ("alpha", "beta")}
    try:
        yield start_pair(lab)
    finally:
        del _ETC_BEFORE[name]


def _etc_unchanged(lab: Lab) -> None:
    for node, before in _ETC_BEFORE[lab.name].items():
        after = _etc_files(lab, node)
        assert {k: v for k, v in after.items() if k not in MANAGED} == \
               {k: v for k, v in before.items() if k not in MANAGED}, node


def _streaming_standby(lab: Lab, node: str) -> bool:
    st = agent_state(lab, node)
    return bool(st) and st["postgres"]["state"] == "standby" and st["postgres"]["streaming"]


def test_cluster_layout_bootstrap_and_failover(pair: Lab, tmp_path: Path) -> None:
    # The clone landed in beta's cluster: its data directory is the cluster's, its settings in conf.d.
    cdir = PG_ETC.joinpath(*cluster_for(pair.name, "beta").split("/"))
    assert "primary_conninfo" in (cdir / "conf.d" / "standby.conf").read_text()
    assert "# BEGIN standby" in (cdir / "pg_hba.conf").read_text()
    assert not (pair.node("beta").pgdata / "postgresql.conf").exists()
    _etc_unchanged(pair)
    res = pair.standby("alpha", "check", "--json", check=False)
    checks = {c["check"]: c for c in json.loads(res.stdout)["checks"] if c["check"].startswith("cluster")}
    assert checks and all(c["verdict"] == "pass" for c in checks.values()), checks
    with under_load(pair, tmp_path) as run:
        pair.crash("alpha")
        pair.wait_for("beta primary, holding the service IP",
                      lambda: primaries(pair) == ["beta"] and holders(pair) == ["beta"], timeout_s=30)
        time.sleep(1.0)
    verdict = verify(pair, run, on="beta")
    assert verdict["ok"], verdict["violations"]
    assert verdict["missing_acked"] == []
    assert run.probe is not None and run.probe.dual == []


def test_cluster_layout_switchover_and_back(pair: Lab, tmp_path: Path) -> None:
    with under_load(pair, tmp_path) as run:
        for new, old in (("beta", "alpha"), ("alpha", "beta")):
            res = pair.standby(old, "switchover", check=False)
            assert res.returncode == 0, res.stdout + res.stderr
            assert primaries(pair) == [new] and holders(pair) == [new]
            pair.wait_for(f"{old} streaming from {new}", lambda old=old: _streaming_standby(pair, old), timeout_s=30)
            time.sleep(0.5)
    verdict = verify(pair, run, on="alpha")
    assert verdict["ok"], verdict["violations"]
    assert verdict["acked"] > 0 and run.probe is not None and run.probe.dual == []
    _etc_unchanged(pair)


def test_cluster_layout_rejoin_after_failover(pair: Lab, tmp_path: Path) -> None:
    with under_load(pair, tmp_path) as run:
        # alpha's server dies under its live agent, which fences (pg_ctlcluster stop) as beta takes over.
        pair.kill_postgres("alpha")
        pair.wait_for("beta primary, alpha fenced", lambda: primaries(pair) == ["beta"]
                      and agent_state(pair, "alpha").get("state", {}).get("fenced"), timeout_s=30)
        time.sleep(1.0)
        res = pair.standby("alpha", "rejoin", "--yes", check=False)
        assert res.returncode == 0, res.stdout + res.stderr
        assert "rejoined by" in res.stdout
        pair.wait_for("alpha streaming and in sync", lambda: _streaming_standby(pair, "alpha")
                      and agent_state(pair, "alpha")["state"]["eligible"], timeout_s=60)
        time.sleep(1.0)
    verdict = verify(pair, run, on="beta")
    assert verdict["ok"], verdict["violations"]
    assert run.probe is not None and run.probe.dual == []
    # alpha streams into its cluster's data directory; its /etc files are the distribution's still.
    assert (pair.node("alpha").pgdata / "standby.signal").exists()
    _etc_unchanged(pair)


def test_cluster_layout_lab_down_drops_its_clusters_even_without_its_state(lab_factory) -> None:  # type: ignore[no-untyped-def]
    name = lab_factory.reserve()
    lab = Lab.up(LabSpec(name=name, durability="sync", pg_layout="cluster"))
    clusters = {cluster_for(name, n) for n in ("alpha", "beta")}
    assert clusters <= _lsclusters()
    assert lab.pg_running("alpha")
    lab.spec.state_file.unlink()  # as a crashed `lab up` leaves it: found by name alone
    Lab.destroy(name)
    assert not clusters & _lsclusters(), "the lab's clusters outlived it"
    assert not any((PG_ETC / c).exists() for c in clusters)
    assert "15/main" in _lsclusters()  # the host's own cluster is left alone


def test_x2_a_bootstrapped_labs_clusters_leave_nothing_in_etc(lab_factory) -> None:  # type: ignore[no-untyped-def]
    """`standby bootstrap` writes conf.d/standby.conf, which pg_dropcluster leaves (it removes only its own
    files): the directory outlived every such lab, piling up in /etc/postgresql/15 run after run, and a
    later lab drawing the same name would have started with the old lab's settings."""
    name = lab_factory.reserve()
    lab = Lab.up(LabSpec(name=name, durability="sync", pg_layout="cluster"))
    lab.bootstrap()
    dirs = [PG_ETC.joinpath(*cluster_for(name, n).split("/")) for n in ("alpha", "beta")]
    assert (dirs[0] / "conf.d" / "standby.conf").exists()
    Lab.destroy(name)
    assert [str(d) for d in dirs if d.exists()] == []


def test_x2_the_sweep_finds_a_lab_whose_only_trace_is_a_cluster_directory(lab_factory) -> None:  # type: ignore[no-untyped-def]
    """What the leak above left on machines: found by the session's sweep (and never drawn as a new name)."""
    name = lab_factory.reserve()  # destroyed at teardown: the directory goes with it
    leftover = PG_ETC / "15" / f"{name}-beta" / "conf.d"
    leftover.mkdir(parents=True)
    (leftover / "standby.conf").write_text("# a lab's settings, its cluster long dropped\n")
    assert name in existing_test_labs()
