"""Findings of the runs after the safety fixes came together: a chaos campaign and the random schedules.

Each test replays the case that broke an invariant, in the simulated world (tests/unit/sim.py).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import threading
from dataclasses import replace
from pathlib import Path

import pytest

from standby import config
from standby.act.fence import read_state
from standby.agent.conditions import MAINTENANCE_GRACE_S, conditions
from standby.agent.node import Agent
from standby.agent.store import Store
from standby.alerts import AlertKind, make_alert
from standby.decide import State, decide
from standby.model import ActionKind, DbState, LocalPg, Net
from tests.unit.configs import example_with_secrets
from tests.unit.sim import World
from tests.unit.test_decide import apply, policies
from tests.unit.test_findings_core import obs, pol, run_steps, view


def test_chaos93_a_standby_does_not_promote_on_the_silence_of_its_own_cut_cables() -> None:
    """Chaos seed 93 (async), fault #2: the standby's both cables were out for about the failover
    timeout; 18 ms after they came back, before any heartbeat had arrived, it promoted ("primary
    silent on every path"), though the primary had served all along: the silence was its own.
    Nothing unheard while its own links were down says anything about the peer."""
    p = pol(sync=False, max_lag_bytes=1000)
    standby = LocalPg(DbState.STANDBY, lsn=100, streaming=True)
    primary = view(DbState.PRIMARY, lsn=100, sync_ok=True)
    s, _ = decide(State(watching_since=0.0), obs(1.0, standby, primary, 1.0), p)
    assert s.eligible
    down = {n: False for n in Net}
    lost = replace(standby, streaming=False)
    s, acts = run_steps(s, p, lambda now: obs(now, lost, primary, 1.0, carrier=down, tiebreaker_ok=False), 1.1, 2.2)
    assert not acts
    # Cables back, the tie-breaker answers, the primary's next heartbeat is still on its way.
    s, acts = run_steps(s, p, lambda now: obs(now, lost, primary, 1.0), 2.3, 2.5)
    assert ActionKind.PROMOTE not in [a.kind for a in acts], acts
    # The primary really is gone: silent for a whole failover timeout with our links up.
    s, acts = run_steps(s, p, lambda now: obs(now, lost, primary, 1.0), 2.6, 3.4)
    assert ActionKind.PROMOTE in [a.kind for a in acts], acts


def test_sim_the_thaw_window_outlives_a_restart_of_the_promoted_server() -> None:
    """Found by the random schedules (async): the standby was promoted while the primary was
    frozen, then its server crashed and came back as primary. The simulator forgot, at that
    crash, that this primary-ness began while the peer was paused, and counted the thawed old
    primary's stop (the one overlap no decision can prevent) as two writers."""
    with World(policies(sync=False), seed=0, stop_delay=0.3, agent_fence_delay=0.0) as w:
        w.run(2.0)
        for fault, node, wait in [("crash", "a", 0.5), ("crash", "a", 0.25), ("boot", "a", 1.0),
                                  ("freeze", "a", 1.0), ("crash", "b", 1.0)]:
            apply(w, fault, node, Net.PUBLIC, 0)
            w.run(wait)
        w.heal()  # raises on two writable primaries outside that window
        w.run(10.0)
        assert len(w.primaries()) == 1, w.log


def test_sim_a_rebooted_node_whose_promotion_was_decided_restarts_only_once_the_peer_is_down() -> None:
    """Read from the same schedule: rebooted with its promotion decided but not seen to finish, a
    node restarted its server as "a standby" at once, though it may come back writable, while
    the old primary was still stopping (FENCING). Such a server is restarted only as a primary
    would be: once the peer is a standby or fenced (down) in no newer term."""
    p = pol(sync=False, max_lag_bytes=1000, restart_backoff_s=0.0)
    s = State(term=1, promoting=True, watching_since=0.0)
    down = LocalPg(DbState.DOWN)
    s, acts = decide(s, obs(1.0, down, view(DbState.FENCING, term=0), 1.0), p)
    assert ActionKind.RESTART_PG not in [a.kind for a in acts], acts
    s, acts = decide(s, obs(1.1, down, view(DbState.PRIMARY, term=0), 1.1), p)
    assert ActionKind.RESTART_PG not in [a.kind for a in acts], acts
    s, acts = decide(s, obs(1.2, down, view(DbState.FENCED, term=0), 1.2), p)
    assert ActionKind.RESTART_PG in [a.kind for a in acts], acts


def test_lab_agent_killed_mid_failover_the_unclean_exit_fence_reads_every_persisted_field(tmp_path: Path) -> None:
    """tests/lab/test_failover.py::test_agent_killed_mid_failover_converges, after the persisted
    fields gained `resumable` and `sync_from_lsn`: `fence --if-unclean` checked the state file
    against its own older list of fields, called a sound file unreadable, and stopped the
    just-promoted primary. Every persisted field, of its declared type, reads back."""
    store = Store(tmp_path, "beta")
    kept = State(term=3, was_primary=True, degraded=True, resumable=True, sync_from_lsn=1234, peer_could_promote=False)
    store.save_state(kept)
    back = read_state(store)
    assert back is not None and back.persisted() == kept.persisted()
    store.state_path.write_text('{"term": true}')
    assert read_state(store) is None  # a damaged one still reads as damaged


def test_flaky_lab_tests_a_blocked_history_write_does_not_hold_up_the_agents_loop(tmp_path: Path) -> None:
    """The two flaky lab tests (reporting IP after a standby crash, pair never ready): the primary's
    agent fenced itself, "stalled 0.65-0.90s", because a history or liveness write (a rename on a
    busy disk took over a second) ran on the event loop, and no heartbeat went out meanwhile.
    Writes now go to the disk thread, in order: recording returns while the disk is stuck."""
    raw, _ = example_with_secrets(tmp_path)
    agent = Agent(config.parse(raw), "alpha")
    stuck, written = threading.Event(), []
    real_append = agent.store.append

    def slow_append(entry: dict) -> None:
        stuck.wait(timeout=30)
        real_append(entry)
        written.append(entry["event"])

    agent.store.append = slow_append  # type: ignore[method-assign]
    try:
        agent.event("first")
        agent.event("second")  # returned although the disk has not taken the first one yet
        assert written == [] and [e["event"] for e in agent.recent] == ["first", "second"]
    finally:
        stuck.set()
        agent.disk_pool.shutdown(wait=True)
    assert written == ["first", "second"]
    assert [e["event"] for e in agent.store.history()][-2:] == ["first", "second"]


def test_m1_maintenance_raises_an_alert_while_it_lasts() -> None:
    """M1: maintenance left on quietly turns a hot pair into one that never fails over; people are
    told while it lasts, and the alert resolves when it ends."""
    primary = LocalPg(DbState.PRIMARY, lsn=100)
    o = obs(1.0, primary, view(DbState.STANDBY), 1.0)
    def raised(**kw: object) -> bool:
        return AlertKind.MAINTENANCE in conditions(State(), o, kw.pop("p"), [], 1 << 30, True, **kw).raised  # type: ignore[arg-type]

    assert raised(p=pol(suspended=True), maintenance_for_s=MAINTENANCE_GRACE_S)
    assert not raised(p=pol(suspended=True), maintenance_for_s=5.0)  # a switchover's own: no mail
    assert not raised(p=pol(), maintenance_for_s=None)
    alert = make_alert(AlertKind.MAINTENANCE, node="alpha", cluster="c", peer="beta")
    assert "maintenance" in alert.summary and alert.next_command == "standby status"


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("runuser") is None, reason="needs root and runuser")
def test_chaos_ci_seed_the_postgresql_account_reaches_its_log_directory_in_the_state_dir() -> None:
    """The CI campaign after the history became private: every `standby rejoin` failed with
    "pg_ctl start failed: cannot create …/state/postgresql-log/startup.log: Permission denied":
    the state directory was closed to everyone (0700), and the server, running as its own account,
    keeps its log in a directory of its own in there. Others may pass through, not list or write."""
    # pytest's own temporary directories are root's alone: this one must be open to passing through.
    tmp_path = Path(tempfile.mkdtemp(prefix="standby-statedir-", dir="/var/tmp"))
    try:
        tmp_path.chmod(0o755)
        _postgres_writes_its_log_in(tmp_path)
    finally:
        shutil.rmtree(tmp_path)


def _postgres_writes_its_log_in(tmp_path: Path) -> None:
    store = Store(tmp_path / "state", "alpha")
    store.record("agent_started", boot=1)
    logs = tmp_path / "state" / "postgresql-log"
    logs.mkdir()
    shutil.chown(logs, "postgres", "postgres")
    res = subprocess.run(["runuser", "-u", "postgres", "--", "sh", "-c", f"echo ok > {logs}/startup.log"],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    listing = subprocess.run(["runuser", "-u", "postgres", "--", "ls", str(tmp_path / "state")],
                             capture_output=True, text=True)
    assert listing.returncode != 0  # passing through, not listing
