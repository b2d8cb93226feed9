"""An adversarial read of the fence path (2026-12-05): three ways a fence could be undone or announced
too early, each shown here on the old code first.

- F1: a person's fence (`POST /fence`, which `standby promote --force` sends before promoting the other
  node) kept a `resumable` left over from an older precautionary fence, so the very next step resumed
  the server ("the peer stayed a standby") while the person went on to promote the peer: two primaries.
- F2: the agent's own fence of a running primary signals the server before the decision is on disk;
  when that write failed (a full or read-only disk), the step was dropped whole, so nothing recorded
  the fence and the crash rule restarted the server it had just stopped, the peer perhaps promoted.
- F3: a fence decided while a restart of the server was still running was announced as FENCED from the
  last reading (down) while the start went on; the peer promotes on FENCED, and the server came up as a
  primary before the fence's stop could run.
- F4: a person's fence wrote "fenced" on the PostgreSQL thread, so its stop signal waited behind a reading
  of the server in progress, however long that took.
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from standby import operations as ops
from standby.api import agent_view
from standby.decide import Policy, State, decide
from standby.model import ActionKind, DbState, LocalPg, Net, Observation, PeerView
from tests.unit.shell_fakes import STANDBY, FakeKernel, FakePostgres, Shell, run, shell

SERVICE_IP = "192.0.2.100"
CARRIER = {Net.PUBLIC: True, Net.PRIVATE: True}
POLICY = Policy(hot=True, sync=True, preferred=True, failover_timeout_s=0.75, fence_timeout_s=0.45,
                heartbeat_s=0.15, link_timeout_s=5.0, degrade_after_s=10.0, max_lag_bytes=1000)


def _peer(term: int, eligible: bool = False) -> PeerView:
    return PeerView(term=term, db=DbState.STANDBY, services=False, lsn=100, sync_ok=False, carrier=CARRIER,
                    tiebreaker_ok=True, eligible=eligible)


def _obs(t: float, db: DbState, term: int) -> Observation:
    return Observation(now=t, gap=0.15, pg=LocalPg(db, lsn=200 if db is DbState.PRIMARY else None), peer=_peer(term),
                       heard={Net.PUBLIC: t, Net.PRIVATE: t}, carrier=CARRIER, tiebreaker_ok=True,
                       services_healthy=True if db is DbState.PRIMARY else None, heard_me=t)


# -- F1 ----------------------------------------------------------------------------------------------


@given(term=st.integers(1, 40), resumable=st.booleans(), degraded=st.booleans(), served_s=st.floats(0.0, 5.0),
       after_s=st.floats(0.15, 60.0))
def test_f1_a_persons_fence_is_never_resumed_by_the_agent(term: int, resumable: bool, degraded: bool,
                                                           served_s: float, after_s: float) -> None:
    """Whatever the state carried (a `resumable` left from any older fence among it), a node a person fenced
    stays down while its peer is heard as a standby that cannot promote: only a rejoin or a person lifts it."""
    s = State(term=term, was_primary=True, degraded=degraded, resumable=resumable, services=True,
              primary_this_run=True)
    t = 100.0
    while t < 100.0 + served_s:  # serving, the peer heard as a standby that cannot promote
        s, _ = decide(s, _obs(t, DbState.PRIMARY, term), POLICY)
        t += 0.15
    s = replace(ops.fenced_by_operator(s), services=False)  # POST /fence, then the release's readback
    end = t + after_s
    while t < end:
        s, acts = decide(s, _obs(t, DbState.DOWN, term), POLICY)
        assert ActionKind.RESTART_PG not in [a.kind for a in acts], (t, acts)
        assert s.fenced
        t += 0.15


states = st.builds(State, term=st.integers(0, 50), peer_term=st.integers(0, 50), fenced=st.booleans(),
                   resumable=st.booleans(), was_primary=st.booleans(), promoting=st.booleans())


@given(states, st.booleans())
def test_f1_no_operation_carries_a_resumable_out_of_the_fence_that_set_it(s: State, planned: bool) -> None:
    """`resumable` belongs to one precautionary fence: a person's fence, a promotion and following a
    primary (rejoin, switchover) all start without it, so it can never speak for a later fence."""
    for new in (ops.fenced_by_operator(s), ops.promoting(s, planned), ops.following(s), ops.rebuilt(s)):
        assert not new.resumable


def test_f1_a_persons_fence_in_the_shell_is_not_undone_by_the_next_steps(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """The agent's side, with a `resumable` on disk left by an older fence: after the person's fence the
    server is never started again while beta, a standby that cannot promote, waits for the person."""
    pg = FakePostgres(DbState.PRIMARY)
    unready = replace(STANDBY, eligible=False)
    with shell(tmp_path, monkeypatch, pg, FakeKernel({SERVICE_IP})) as sh:
        sh.agent.store.save_state(replace(sh.agent.cell.state, resumable=True, was_primary=True, term=1))

        async def go() -> None:
            await sh.start()
            assert sh.agent.state.resumable
            for _ in range(10):
                await sh.tick(peer=unready)
            await sh.agent.operator.operate("fence")
            for _ in range(20):  # 3 s: four failover timeouts
                await sh.tick(peer=unready)

        run(go())
        assert "start" not in pg.calls, pg.calls
        assert sh.agent.state.fenced and pg.db is DbState.DOWN and SERVICE_IP not in sh.kernel.held


# -- F2 ----------------------------------------------------------------------------------------------


def _no_space_for_a_fence(sh: Shell) -> list[State]:
    """The state file cannot be written while the state says fenced (ENOSPC); what was refused."""
    refused: list[State] = []
    save = sh.agent.store.save_state

    def save_unless_fenced(state: State) -> None:
        if state.fenced:
            refused.append(state)
            raise OSError(28, "No space left on device")
        save(state)

    sh.monkeypatch.setattr(sh.agent.store, "save_state", save_unless_fenced)
    return refused


async def _stalled(sh: Shell, unheard_steps: int) -> None:
    """Alpha serves five steps, stalls 6.8 s (its peer may have taken over: the stall fence), then steps on
    ``unheard_steps`` times without hearing beta."""
    await sh.start()
    for _ in range(5):
        await sh.tick()
    await sh.tick(advance=6.8)
    for _ in range(unheard_steps):
        await sh.tick(peer=None)


def test_f2_a_fence_whose_record_cannot_be_written_still_fences(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Alpha stalls 6.8 s (its peer may have taken over), decides to fence and signals its server; the state
    file cannot be written. The fence goes on (stop, service IPs released), the agent holds it in memory and
    keeps trying to write it, and the crash rule never starts the server again while the peer is unheard."""
    pg = FakePostgres(DbState.PRIMARY)
    with shell(tmp_path, monkeypatch, pg, FakeKernel({SERVICE_IP})) as sh:
        refused = _no_space_for_a_fence(sh)

        run(_stalled(sh, 20))
        assert pg.calls[:2] == ["stop_requested", "stop"] and "start" not in pg.calls, pg.calls
        assert sh.agent.state.fenced and SERVICE_IP not in sh.kernel.held
        assert len(refused) > 1  # tried again at later steps, not given up after one failure
        failed = sh.events("write_failed")  # for the operator: in the history and the journal
        assert [e["source"] for e in failed] == ["state file"] and "No space left" in failed[0]["error"], failed


def test_f2_a_record_that_could_not_be_written_is_written_once_the_disk_allows(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pg = FakePostgres(DbState.PRIMARY)
    with shell(tmp_path, monkeypatch, pg, FakeKernel({SERVICE_IP})) as sh:
        save = sh.agent.store.save_state
        _no_space_for_a_fence(sh)

        async def go() -> None:
            await _stalled(sh, 1)
            sh.monkeypatch.setattr(sh.agent.store, "save_state", save)  # space again
            await sh.tick(peer=None)

        run(go())
        assert sh.agent.store.load_state()["fenced"] is True


@pytest.mark.parametrize("disk_full", [False, True])
def test_f2_a_failed_write_without_a_fence_still_acts_on_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                disk_full: bool) -> None:
    """Only a fence goes on without its record: a decision that gives this node something (here the standby's
    promotion, its primary fenced) waits until its record is on disk, as before."""
    pg = FakePostgres(DbState.STANDBY)
    with shell(tmp_path, monkeypatch, pg, FakeKernel()) as sh:
        def no_space(state: State) -> None:
            raise OSError(28, "No space left on device")

        failed = 0

        async def go() -> None:
            nonlocal failed
            await sh.start()
            for _ in range(5):
                await sh.tick(peer=replace(STANDBY, db=DbState.PRIMARY, eligible=False))
            if disk_full:
                sh.monkeypatch.setattr(sh.agent.store, "save_state", no_space)
            for _ in range(20):  # the primary fenced itself and hands the database over: a promotion is due
                try:
                    await sh.tick(peer=replace(STANDBY, db=DbState.FENCED, eligible=False))
                except OSError:
                    failed += 1

        run(go())
        if disk_full:
            assert failed > 1 and "promote" not in pg.calls and not sh.agent.state.promoting, pg.calls
        else:
            assert "promote" in pg.calls  # the schedule does promote where the disk takes the record


# -- F3 ----------------------------------------------------------------------------------------------


class SlowStart(FakePostgres):
    """A crash recovery that takes a while: the start holds the PostgreSQL thread until let go."""

    def __init__(self) -> None:
        super().__init__(DbState.PRIMARY)
        self.gate = threading.Event()

    def start(self) -> None:
        self.calls.append("start_begun")
        self.gate.wait(10)
        self.calls.append("start")
        self.db = DbState.PRIMARY  # a primary's data directory comes back as a primary


def test_f3_a_fence_decided_while_a_restart_runs_is_not_announced_fenced_before_the_server_stopped(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Alpha's server dies while beta's heartbeats are lost; alpha starts it again (it saw it serve). Beta is
    heard again meanwhile, a standby with everything: alpha fences for a failover. Until the fence's stop
    has run after the start, alpha must say FENCING (beta waits), never FENCED (beta promotes)."""
    pg = SlowStart()
    with shell(tmp_path, monkeypatch, pg, FakeKernel({SERVICE_IP})) as sh:
        async def step(peer: PeerView | None) -> None:  # a tick without waiting for the actions
            sh.clock.advance(0.15)
            sh.agent.link.send(sh.agent._advertised())
            sh.agent.probers.tiebreaker_at = sh.clock.t
            if peer is not None:
                for net in Net:
                    sh.net.deliver(net, *sh._from_peer(peer, net))
            await sh.agent._step()

        said: list[tuple[list[str], DbState]] = []

        async def go() -> None:
            await sh.start()
            for _ in range(6):
                await sh.tick()
            for _ in range(8):
                await sh.tick(peer=None)
            pg.db = DbState.DOWN  # the postmaster dies
            await step(None)  # restart in place: this run saw it serve
            await step(STANDBY)  # beta heard again: the fence for a failover, while the start runs
            for _ in range(3):
                await step(STANDBY)
                said.append((list(pg.calls), sh.agent._advertised().db))
            pg.gate.set()
            await sh.agent.executor.drain()
            for _ in range(3):  # the fence's stop ran after the start; a reading after it says down
                await sh.tick()
            said.append((list(pg.calls), sh.agent._advertised().db))

        run(go())
        decisions = [(e["action"], e["reason"]) for e in sh.events("decision")]
        assert ("restart_pg", "pg_crashed_restart") in decisions and ("fence", "pg_crashed_failover") in decisions
        for calls, db in said[:-1]:
            assert calls[-1] == "start_begun" and db is DbState.FENCING, said
        calls, db = said[-1]
        assert db is DbState.FENCED and calls[:3] == ["start_begun", "start", "stop"] and pg.db is DbState.DOWN, said


# -- F4 ----------------------------------------------------------------------------------------------


class HungRead(FakePostgres):
    """A reading of the server that does not come back until let go (a backend stuck where the statement
    timeout cannot reach it)."""

    def __init__(self) -> None:
        super().__init__(DbState.PRIMARY)
        self.free, self.signalled = threading.Event(), threading.Event()

    def hung_read(self) -> None:
        self.free.wait(10)

    def request_stop(self) -> None:
        super().request_stop()
        self.signalled.set()


def test_f4_a_persons_fence_signals_the_server_while_a_reading_of_it_hangs(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    pg = HungRead()
    with shell(tmp_path, monkeypatch, pg, FakeKernel({SERVICE_IP})) as sh:
        signalled_while_hung: list[bool] = []

        async def go() -> None:
            await sh.start()
            for _ in range(5):
                await sh.tick()
            sh.agent.pg_pool.submit(pg.hung_read)  # the PostgreSQL thread is taken
            fence = asyncio.ensure_future(sh.agent.operator.operate("fence"))
            signalled = await asyncio.to_thread(pg.signalled.wait, 5)
            signalled_while_hung.append(signalled and not pg.free.is_set())
            pg.free.set()
            await fence

        run(go())
        assert signalled_while_hung == [True], pg.calls
        assert pg.calls == ["stop_requested", "stop"] and sh.agent.store.load_state()["fenced"] is True


class HungReadStop(HungRead):
    """As HungRead, and says whether each stop came while the reading still hung."""

    def __init__(self) -> None:
        super().__init__()
        self.stopped = threading.Event()
        self.stops_while_hung: list[bool] = []
        self.hanging = False

    def hung_read(self) -> None:
        self.hanging = True
        try:
            super().hung_read()
        finally:
            self.hanging = False

    def stop(self) -> None:
        self.stops_while_hung.append(self.hanging)
        super().stop()
        self.stopped.set()


async def _serving_then_hung(sh: Shell, pg: HungReadStop) -> None:
    """Five healthy steps, then the PostgreSQL thread taken by a reading that hangs."""
    await sh.start()
    for _ in range(5):
        await sh.tick()
    sh.agent.pg_pool.submit(pg.hung_read)


def test_r3_a_decided_fences_stop_does_not_wait_behind_a_reading_that_hangs(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Known residual of the second read (2026-12-05): the agent's own FENCE ran its stop on the PostgreSQL
    thread, behind a reading that hung there (a server stopped by SIGSTOP: its statement timeout never fires),
    so the escalation to SIGKILL that such a server needs never came; the fast-shutdown signal alone is only
    acted on once the server runs again. The stop now has a thread of its own."""
    pg = HungReadStop()
    with shell(tmp_path, monkeypatch, pg, FakeKernel({SERVICE_IP})) as sh:
        async def go() -> None:
            await _serving_then_hung(sh, pg)
            await sh.tick(advance=6.8)  # a stall: its peer may have taken over; the fence is decided
            stopped = await asyncio.to_thread(pg.stopped.wait, 5)
            pg.free.set()
            assert stopped, pg.calls
            await sh.agent.executor.drain()

        run(go())
        assert pg.calls[:2] == ["stop_requested", "stop"] and pg.stops_while_hung == [True], pg.calls
        assert sh.agent.state.fenced


def test_r3_a_persons_fences_stop_does_not_wait_behind_a_reading_that_hangs(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same for a person's fence (F4 took its signal and its record off the PostgreSQL thread; its stop
    was still there)."""
    pg = HungReadStop()
    with shell(tmp_path, monkeypatch, pg, FakeKernel({SERVICE_IP})) as sh:
        async def go() -> None:
            await _serving_then_hung(sh, pg)
            fence = asyncio.ensure_future(sh.agent.operator.operate("fence"))
            stopped = await asyncio.to_thread(pg.stopped.wait, 5)
            pg.free.set()
            assert stopped, pg.calls
            await fence

        run(go())
        assert pg.stops_while_hung == [True] and sh.agent.store.load_state()["fenced"] is True, pg.calls


class FrozenRead(HungReadStop):
    """The agent's own question is the one that hangs, once ``frozen`` is set (its processes stopped)."""

    def __init__(self) -> None:
        super().__init__()
        self.frozen = threading.Event()

    def read(self) -> tuple[LocalPg, str | None]:
        if self.frozen.is_set():
            self.hung_read()
        return super().read()


def test_r4_a_switchover_on_a_server_that_does_not_answer_is_refused_and_the_turn_is_free(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Known residual of the unresponsive-server read: a switchover's demote on a primary whose server hangs
    (its processes stopped) waited behind the hung reading for ever, holding the decision turn; the agent then
    decided nothing, not even the hand-over of that server. It is refused at once, nothing is changed, and the
    next step decides."""
    from standby.agent.opsteps import OpError

    pg = FrozenRead()
    with shell(tmp_path, monkeypatch, pg, FakeKernel({SERVICE_IP})) as sh:
        async def go() -> None:
            await sh.agent.operator.set_maintenance(True)
            await sh.start()
            for _ in range(5):
                await sh.tick()
            pg.frozen.set()  # the server stops answering: the agent's next question hangs on its open connection
            for _ in range(40):  # 6 s: unanswered past the bound
                await sh.tick()
            assert agent_view(sh.agent).postgres.unanswered_s > 5  # what `standby status` and the commands read
            decided = sh.agent.decisions
            try:
                with pytest.raises(OpError, match="not answered"):
                    await asyncio.wait_for(sh.agent.operator.operate("demote"), 3)
                await asyncio.wait_for(sh.tick(), 3)  # the turn is free: the next step runs
                assert sh.agent.decisions == decided + 1
            finally:
                pg.free.set()

        run(go())
        assert pg.calls == [] and pg.stops_while_hung == [] and sh.kernel.held == {SERVICE_IP}, pg.calls
        assert not sh.agent.state.fenced


# -- the second read, of the fixes above ------------------------------------------------------------


def test_r2_a_state_write_that_lands_and_then_raises_is_written_again(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """The file's fsync and rename done, the directory's fsync fails: the file may say what nobody acted on
    (a promotion refused, say). Nobody knows what it says, so the next write goes ahead."""
    from standby.agent import store as store_mod
    from standby.agent.store import Store

    st = Store(tmp_path / "state", "beta")
    old = st.restored(0.0, False)
    st.save_state(old)
    real_fsync = store_mod.os.fsync
    calls = [0]

    def fsync(fd: int) -> None:
        calls[0] += 1
        if calls[0] == 2:  # the directory's
            raise OSError(5, "Input/output error")
        real_fsync(fd)

    monkeypatch.setattr(store_mod.os, "fsync", fsync)
    with pytest.raises(OSError):
        st.save_state(ops.promoting(old, planned=False))
    assert st.load_state()["promoting"] is True  # it landed
    assert st.unsaved(old)  # so the step that goes on with the old state writes it again


def test_r2_a_fence_held_in_memory_is_not_undone_by_a_clean_restart(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The stall fence could not be written; the agent is then stopped cleanly and started again. The disk says
    not fenced and was primary, so the liveness record must not say a clean stop just now: the new agent takes
    the time since the last decision on disk as unattended and fences first, instead of restarting the server
    on beta's first heartbeat as a standby in no newer term (the crash rule)."""
    pg = FakePostgres(DbState.PRIMARY)
    with shell(tmp_path, monkeypatch, pg, FakeKernel({SERVICE_IP})) as sh:
        _no_space_for_a_fence(sh)

        async def first() -> None:
            await _stalled(sh, 10)
            sh.agent.stop()
            await sh.agent._shut_down([])  # the clean stop's own writes

        run(first())
        assert sh.agent.store.load_state()["fenced"] is False and pg.db is DbState.DOWN
        done = len(pg.calls)
        sh.restart()

        async def second() -> None:
            await sh.start()
            for _ in range(5):
                await sh.tick()

        run(second())
        assert "start" not in pg.calls[done:], pg.calls
        assert sh.agent.state.fenced and sh.agent.store.load_state()["fenced"] is True


def test_r2_a_failing_state_write_is_recorded_once_not_at_every_step(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """A read-only disk names a new temporary file in every error: the record says the error without it."""
    pg = FakePostgres(DbState.PRIMARY)
    with shell(tmp_path, monkeypatch, pg, FakeKernel({SERVICE_IP})) as sh:
        save, n = sh.agent.store.save_state, [0]

        def read_only(state: State) -> None:
            if state.fenced:
                n[0] += 1
                raise OSError(30, "Read-only file system", f"{tmp_path}/.agent-state.json.{n[0]:08x}")
            save(state)

        monkeypatch.setattr(sh.agent.store, "save_state", read_only)

        run(_stalled(sh, 30))
        assert n[0] > 20 and len(sh.events("write_failed")) == 1


def test_r2_a_persons_fence_says_fencing_until_its_stop_is_done(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Right after a restart of the server the last reading may still say down: between the person's fence's
    record and its stop, the heartbeat must not say FENCED on that reading."""
    said: list[DbState] = []

    class Watched(FakePostgres):
        def request_stop(self) -> None:
            super().request_stop()
            said.append(sh.agent._advertised().db)  # right after "fenced" is on disk

    pg = Watched(DbState.PRIMARY)
    with shell(tmp_path, monkeypatch, pg, FakeKernel({SERVICE_IP})) as sh:
        async def go() -> None:
            await sh.start()
            for _ in range(5):
                await sh.tick()
            sh.agent.observer.pg = LocalPg(DbState.DOWN)  # a reading from before the server came back
            await sh.agent.operator.operate("fence")

        run(go())
        assert said == [DbState.FENCING] and pg.calls == ["stop_requested", "stop"]
