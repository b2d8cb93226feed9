"""A primary whose PostgreSQL answers nothing (chaos kind postgres-freeze: a hung disk, a server stopped by a
signal). Its last observation (PRIMARY) stood for ever: the services moved on their failing health check, to
a standby whose clients then used the same frozen database, and the database itself never moved. Now, after
timings.postgres_unresponsive_ms without any answer, it is handed over as a crashed server is: fenced (the
stop escalating to SIGKILL, off the PostgreSQL thread where the reading hangs) for an in-sync standby that
takes over once the server is seen down. A slow server (its queries time out: it answers) is not hung."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import threading
import time
from dataclasses import replace
from pathlib import Path

import psycopg
import pytest
from hypothesis import given
from hypothesis import strategies as st

from standby import config
from standby.act import fence
from standby.act import postgres as pgact
from standby.decide import PgCrashPolicy, Policy, State, decide
from standby.model import ActionKind, DbState, LocalPg, Net, Observation, PeerView, Reason
from standby.observe import postgres as pgobs
from tests.unit.configs import example_with_secrets
from tests.unit.shell_fakes import INTERVAL_S, FakeKernel, FakePostgres, run, shell

SERVICE_IP = "192.0.2.100"
CARRIER = {Net.PUBLIC: True, Net.PRIVATE: True}
POLICY = Policy(hot=True, sync=True, preferred=True, failover_timeout_s=0.75, fence_timeout_s=0.45,
                heartbeat_s=0.15, link_timeout_s=5.0, degrade_after_s=0.0, max_lag_bytes=1000, pg_unresponsive_s=15.0,
                wal_stuck_s=30.0)
SERVING = State(term=3, was_primary=True, services=True, primary_this_run=True, sync_established=True)


def _obs(silent_s: float, peer_db: DbState = DbState.STANDBY, eligible: bool = True) -> Observation:
    t = 1000.0
    peer = PeerView(term=3, db=peer_db, services=False, lsn=100, sync_ok=True, carrier=CARRIER, tiebreaker_ok=True,
                    eligible=eligible)
    return Observation(now=t, gap=0.15, pg=LocalPg(DbState.PRIMARY, lsn=200, peer_sync=True, peer_flush_lsn=200),
                       peer=peer, heard={Net.PUBLIC: t, Net.PRIVATE: t}, carrier=CARRIER, tiebreaker_ok=True,
                       services_healthy=False, heard_me=t, pg_silent_s=silent_s)


@given(silent_s=st.floats(15.0, 3600.0))
def test_a_primary_silent_past_the_bound_hands_the_database_over_as_a_crashed_one(silent_s: float) -> None:
    s, acts = decide(SERVING, _obs(silent_s), POLICY)
    assert [(a.kind, a.reason) for a in acts] == [(ActionKind.FENCE, Reason.PG_UNRESPONSIVE_FAILOVER)]
    assert s.fenced and s.resumable and not s.was_primary  # a hand-over: resumed if the peer stays a standby


@given(silent_s=st.floats(0.0, 14.99))
def test_a_slow_or_briefly_silent_primary_is_left_alone(silent_s: float) -> None:
    s, acts = decide(SERVING, _obs(silent_s), POLICY)
    assert not s.fenced and not any(a.kind is ActionKind.FENCE for a in acts)


# A server that serves nobody, either way: it answers nothing, or its WAL disk hangs (tests/unit/test_wal_stuck.py).
NOT_SERVING = {"silent": lambda peer_db: _obs(3600.0, peer_db=peer_db),
               "wal stuck": lambda peer_db: replace(_obs(0.0, peer_db=peer_db), wal_stuck_s=3600.0)}


@pytest.mark.parametrize("how", NOT_SERVING)
@pytest.mark.parametrize("why, policy, peer_db", [
    ("never, when set to 0", replace(POLICY, pg_unresponsive_s=0.0, wal_stuck_s=0.0), DbState.STANDBY),
    ("warm mode: a person decides", replace(POLICY, hot=False), DbState.STANDBY),
    ("on_postgres_crash = restart", replace(POLICY, pg_crash=PgCrashPolicy.RESTART), DbState.STANDBY),
    ("maintenance", replace(POLICY, suspended=True), DbState.STANDBY),
    ("no standby to take over", POLICY, DbState.DOWN),
])
def test_no_hand_over_where_a_crashed_server_would_not_get_one(how: str, why: str, policy: Policy,
                                                               peer_db: DbState) -> None:
    s, acts = decide(SERVING, NOT_SERVING[how](peer_db), policy)
    assert not s.fenced and not any(a.kind is ActionKind.FENCE for a in acts), why


@pytest.mark.parametrize("how", NOT_SERVING)
def test_not_to_a_standby_that_may_lack_acknowledged_commits(how: str) -> None:
    """Degraded sync (commits acknowledged alone): the standby may not have them, as for a crash."""
    s, acts = decide(replace(SERVING, degraded=True, sync_established=False), NOT_SERVING[how](DbState.STANDBY),
                     replace(POLICY, degrade_after_s=5.0))
    assert not s.fenced and not any(a.kind is ActionKind.FENCE for a in acts)


def _timings(tmp_path: Path, **change: int) -> dict[str, int]:
    """The example's [timings] with ``change`` (the shell replaces whole tables)."""
    (tmp_path / "example").mkdir()
    raw, _ = example_with_secrets(tmp_path / "example")
    return {**raw["timings"], **change}


class Frozen(FakePostgres):
    """A server that answers every reading until frozen, then none until let go; says whether it was stopped
    while a reading hung."""

    def __init__(self) -> None:
        super().__init__(DbState.PRIMARY)
        self.frozen, self.free, self.stopped = threading.Event(), threading.Event(), threading.Event()
        self.hanging = False
        self.stops_while_hung: list[bool] = []

    def read(self):  # type: ignore[no-untyped-def]
        if self.frozen.is_set() and not self.free.is_set():
            self.hanging = True
            self.free.wait(30)
            self.hanging = False
        return super().read()

    def stop(self) -> None:
        self.stops_while_hung.append(self.hanging)
        super().stop()
        self.stopped.set()


def test_postgres_freeze_on_the_primary_fences_it_after_the_bound_while_the_reading_hangs(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    timings = _timings(tmp_path, postgres_unresponsive_ms=5000)
    pg = Frozen()
    with shell(tmp_path, monkeypatch, pg, FakeKernel({SERVICE_IP}), extra={"timings": timings}) as sh:
        fenced_after: list[float] = []

        async def go() -> None:
            await sh.start()
            for _ in range(5):
                await sh.tick()
            pg.frozen.set()
            frozen_at = sh.clock.t
            for _ in range(80):  # 12 s of heartbeats, each step waiting one interval for the reading
                await sh.tick()
                if sh.agent.state.fenced:
                    fenced_after.append(sh.clock.t - frozen_at)
                    break
            stopped = await asyncio.to_thread(pg.stopped.wait, 10)
            pg.free.set()
            assert stopped, pg.calls

        try:
            run(go())
        finally:
            pg.free.set()
        assert fenced_after and 5.0 <= fenced_after[0] <= 5.0 + 3 * INTERVAL_S, fenced_after
        decisions = [(e["action"], e["reason"]) for e in sh.events("decision")]
        assert ("fence", "pg_unresponsive_failover") in decisions, decisions
        assert pg.stops_while_hung == [True], pg.calls  # the escalating stop did not wait for the reading
        # The escalating stop (a stopped postmaster is killed at once by the stop itself, act.fence.stop_postgres):
        # the agent may be what could not read a server that still serves (second read of the hung disk, 4).
        assert pg.fence_stops[:1] == [False], pg.fence_stops


@pytest.mark.parametrize("answer", [pgobs.Unanswered.TIMEOUT, pgobs.Unanswered.REFUSED,
                                    pgobs.Unanswered.TOO_MANY_CLIENTS])
def test_a_server_that_answers_with_an_error_is_not_hung(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         answer: pgobs.Unanswered) -> None:
    """Each reading ends in the statement timeout (a busy primary, M3), in an error the server gives (a
    pg_hba.conf or password change that shuts the agent out), or in too many clients: the server answers, and
    a healthy primary is not handed over for the agent's own trouble reading it."""

    class Busy(FakePostgres):
        busy = False

        def read(self):  # type: ignore[no-untyped-def]
            return answer if self.busy else super().read()

    timings = _timings(tmp_path, postgres_unresponsive_ms=5000)
    pg = Busy(DbState.PRIMARY)
    with shell(tmp_path, monkeypatch, pg, FakeKernel({SERVICE_IP}), extra={"timings": timings}) as sh:
        async def go() -> None:
            await sh.start()
            for _ in range(5):
                await sh.tick()
            pg.busy = True
            for _ in range(60):  # 9 s of timeouts
                await sh.tick()

        run(go())
        assert not sh.agent.state.fenced and "stop" not in pg.calls, pg.calls


def test_the_bound_below_the_minimum_is_refused_naming_the_key(tmp_path: Path) -> None:
    raw, _ = example_with_secrets(tmp_path)
    raw["timings"]["postgres_unresponsive_ms"] = 2000
    with pytest.raises(config.ConfigError, match="timings.postgres_unresponsive_ms"):
        config.parse(raw)
    raw["timings"]["postgres_unresponsive_ms"] = 0  # never: accepted
    assert config.parse(raw).timings.postgres_unresponsive_ms == 0


def test_an_error_the_server_gave_is_an_answer_and_a_connection_that_timed_out_is_not() -> None:
    assert pgobs.unanswered(psycopg.errors.InvalidPassword(), True) is pgobs.Unanswered.REFUSED
    assert pgobs.unanswered(psycopg.errors.QueryCanceled(), True) is pgobs.Unanswered.TIMEOUT
    assert pgobs.unanswered(psycopg.OperationalError("connection timeout expired"), True) is pgobs.Unanswered.NO_ANSWER
    assert pgobs.unanswered(psycopg.OperationalError("connection timeout expired"), False) is pgobs.Unanswered.NOT_RUNNING


def test_a_primary_the_agent_cannot_connect_to_is_not_taken_for_a_hung_one(tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Review of the rule (2026-12-05): it counted connection attempts that failed without a word from the
    server (a connect timeout on a busy host, a full socket backlog) as silence, while the sessions already
    open went on committing; after 15 s the primary was fenced on a 15 s old reading, and in async what the
    standby had not received since was lost. Only a question left unanswered on an open connection counts."""

    class Unreachable(FakePostgres):
        cut = False

        @property
        def connected(self) -> bool:
            return not self.cut and super().connected

        def read(self):  # type: ignore[no-untyped-def]
            return pgobs.Unanswered.NO_ANSWER if self.cut else super().read()

    timings = _timings(tmp_path, postgres_unresponsive_ms=5000)
    pg = Unreachable(DbState.PRIMARY)
    with shell(tmp_path, monkeypatch, pg, FakeKernel({SERVICE_IP}), extra={"timings": timings}) as sh:
        async def go() -> None:
            await sh.start()
            for _ in range(5):
                await sh.tick()
            pg.cut = True
            for _ in range(60):  # 9 s of failed connections
                await sh.tick()

        run(go())
        assert not sh.agent.state.fenced and "stop" not in pg.calls, pg.calls


def test_a_postmaster_stopped_by_a_signal_is_killed_at_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A stopped postmaster acts on a shutdown request only once it runs again, taking writes first: the fence's
    stop goes to SIGKILL without asking (a real process stands in for the postmaster)."""
    data = tmp_path / "data"
    data.mkdir()
    raw, _ = example_with_secrets(tmp_path)
    raw["postgres"]["data_dir"] = str(data)
    cfg = config.parse(raw)
    asked: list[str] = []
    monkeypatch.setattr(fence.pgact, "stop", lambda *a, **kw: asked.append("pg_ctl stop"))
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "postgres").symlink_to(shutil.which("sleep") or "/bin/sleep")  # named as a postmaster is
    server = subprocess.Popen([str(tmp_path / "bin" / "postgres"), "60"])
    try:
        (data / "postmaster.pid").write_text(f"{server.pid}\n{data}\n")
        os.kill(server.pid, signal.SIGSTOP)
        deadline = time.monotonic() + 5
        while not pgact.stopped_by_signal(server.pid) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert fence.stop_postgres(cfg, "alpha") is fence.StopStep.KILL
        assert asked == [] and server.wait(5) == -signal.SIGKILL
    finally:
        server.kill()
        server.wait(5)
