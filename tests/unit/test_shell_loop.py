"""The agent's shell in seconds: its loop and parts against a fake clock, network, PostgreSQL and kernel.

The decisions are the real ones (standby.decide); what is checked is what the shell makes of them:
what it observes, what it runs, what it persists and what it tells the peer.
"""

from __future__ import annotations

import json
from enum import StrEnum
from pathlib import Path
from typing import Any, cast

import pytest

from standby.agent import node as node_mod
from standby.agent.executor import Executor
from standby.agent.store import Store
from standby.decide import State
from standby.model import Action, ActionKind, DbState, Net, Observation, Reason
from tests.unit.shell_fakes import STANDBY, FakeKernel, FakePostgres, run, shell, view

SERVICE_IP = "192.0.2.100"


def decided(events: list[dict[str, Any]]) -> set[tuple[str, str]]:
    return {(e["action"], e["reason"]) for e in events}


def test_shell_a_stalled_primary_fences_before_anything_else(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A primary whose process stood still past the stall limit (no heartbeats sent) fences itself."""
    pg = FakePostgres(DbState.PRIMARY)
    with shell(tmp_path, monkeypatch, pg, FakeKernel({SERVICE_IP})) as sh:
        async def go() -> None:
            await sh.start()
            for _ in range(10):
                await sh.tick()
            assert sh.events("decision") == [], "a healthy pair has nothing to decide"
            await sh.tick(advance=2.0, send=False)  # frozen for two seconds: nothing sent, nothing decided
            await sh.tick()
            await sh.tick()  # the heartbeat after the stop

        run(go())
        assert ("fence", "resumed_after_freeze") in decided(sh.events("decision"))
        assert pg.db is DbState.DOWN and sh.kernel.held == set()
        assert json.loads(sh.agent.store.state_path.read_text())["fenced"] is True
        assert sh.said().db is DbState.FENCED


def test_shell_one_lost_heartbeat_path_is_not_isolation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The private path loses every packet (and later alpha's own private link is out): the peer is still
    heard on the public one, so nothing is decided. Both paths and the tie-breaker gone: isolated."""
    pg = FakePostgres(DbState.PRIMARY)
    with shell(tmp_path, monkeypatch, pg, FakeKernel({SERVICE_IP})) as sh:
        async def go() -> None:
            await sh.start()
            await sh.tick()
            sh.net.lost.add(Net.PRIVATE)
            for _ in range(20):  # three seconds: past the fence and failover timeouts
                await sh.tick()
            sh.net.lost.discard(Net.PRIVATE)
            sh.net.unplugged.add(Net.PRIVATE)
            for _ in range(3):
                await sh.tick()
            assert sh.events("decision") == [] and not sh.agent.state.fenced and pg.db is DbState.PRIMARY
            assert sh.agent.peer_view == STANDBY
            assert sh.agent.counters.send_errors[Net.PRIVATE.value] == 3
            assert sh.agent.counters.sent[Net.PUBLIC.value] == 24
            sh.net.unplugged.discard(Net.PRIVATE)
            sh.net.lost |= {Net.PUBLIC, Net.PRIVATE}
            sh.net.tiebreaker = False
            for _ in range(10):
                await sh.tick()

        run(go())
        assert ("fence", "isolated") in decided(sh.events("decision"))
        assert pg.db is DbState.DOWN


def test_shell_a_failed_action_is_recorded_and_decided_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A standby's server died; the first restart fails: recorded, the agent goes on, the next one works."""
    pg = FakePostgres(DbState.STANDBY, failing_starts=1)
    primary = view(DbState.PRIMARY, services=True)
    with shell(tmp_path, monkeypatch, pg) as sh:
        async def go() -> None:
            await sh.start()
            for _ in range(3):
                await sh.tick(primary)
            pg.db = DbState.DOWN
            for _ in range(40):  # six seconds: past the restart backoff
                await sh.tick(primary)

        run(go())
        failed = [e for e in sh.events("action_failed") if e["action"] == "restart_pg"]
        done = [e for e in sh.events("done") if e["action"] == "restart_pg"]
        assert len(failed) == 1 and "could not start" in failed[0]["error"]
        assert len(done) == 1 and pg.calls == ["start", "start"] and pg.db is DbState.STANDBY


class _Unheard(StrEnum):
    REBOOT = "reboot_host"


def test_shell_an_unknown_action_kind_is_an_error_not_done(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An action the shell has no handler for is refused and recorded as failed; the loop goes on."""
    real = node_mod.decide
    injected: list[bool] = []

    def decide(s: State, o: Observation, p: Any) -> tuple[State, list[Action]]:
        new, actions = real(s, o, p)
        if not injected:
            injected.append(True)
            actions = [*actions, Action(cast(ActionKind, _Unheard.REBOOT), Reason.ISOLATED, "no such action")]
        return new, actions

    monkeypatch.setattr(node_mod, "decide", decide)
    pg = FakePostgres(DbState.PRIMARY)
    with shell(tmp_path, monkeypatch, pg, FakeKernel({SERVICE_IP})) as sh:
        async def go() -> None:
            await sh.start()
            for _ in range(3):
                await sh.tick()

        run(go())
        failed = [e for e in sh.events("action_failed") if e["action"] == "reboot_host"]
        assert len(failed) == 1 and "reboot_host" in failed[0]["error"]
        assert not [e for e in sh.events("done") if e["action"] == "reboot_host"]
        assert sh.agent.counters.decisions == 3 and sh.events("step_failed") == []


def test_shell_a_restarted_agent_continues_from_its_persisted_state(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Superseded and fenced in term 1, the agent dies; the next one is still fenced in term 1, says so,
    and starts nothing."""
    Store(tmp_path / "state", "alpha").save_state(State(term=1, was_primary=True))
    pg = FakePostgres(DbState.PRIMARY)
    newer = view(DbState.PRIMARY, term=2, services=True)
    with shell(tmp_path, monkeypatch, pg, FakeKernel({SERVICE_IP})) as sh:
        async def first() -> None:
            await sh.start()
            for _ in range(3):
                await sh.tick()
            await sh.tick(newer)

        run(first())
        assert ("fence", "superseded") in decided(sh.events("decision")) and pg.db is DbState.DOWN
        first_boot, calls = sh.agent.boot, list(pg.calls)

        sh.restart()

        async def second() -> None:
            await sh.start()
            for _ in range(10):
                await sh.tick(newer)

        run(second())
        started = sh.events("agent_started")[-1]
        assert started["restored"]["fenced"] is True and started["restored"]["term"] == 1
        assert sh.agent.boot > first_boot
        assert sh.agent.state.fenced and sh.agent.state.term == 1
        assert sh.said(Net.PRIVATE).db is DbState.FENCED and sh.said(Net.PRIVATE).term == 1
        assert pg.calls == calls and pg.db is DbState.DOWN, "the restarted agent started or promoted PostgreSQL"
        assert sh.agent.peer_view == newer, "the restarted agent does not hear its peer"


def test_shell_every_action_kind_has_a_handler_and_a_missing_one_is_refused_at_start(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with shell(tmp_path, monkeypatch, FakePostgres()) as sh:
        table = sh.agent.actions.table()
        assert set(table) == set(ActionKind)
        partial = {k: h for k, h in table.items() if k is not ActionKind.SET_SYNC}
        with pytest.raises(ValueError, match="set_sync"):
            Executor(partial, sh.agent.event, sh.agent.actions.readback)


def test_shell_loss_one_way_is_seen_through_the_peers_acknowledgements(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Alpha still hears beta on both paths, but beta no longer hears alpha (its acknowledgements stop):
    with the tie-breaker gone too, the primary counts that as isolation and fences."""
    pg = FakePostgres(DbState.PRIMARY)
    with shell(tmp_path, monkeypatch, pg, FakeKernel({SERVICE_IP})) as sh:
        async def go() -> None:
            await sh.start()
            for _ in range(5):
                await sh.tick()
            sh.net.tiebreaker = False
            for _ in range(2):  # the tie-breaker alone: the peer hears us, nothing to do
                await sh.tick()
            assert sh.events("decision") == []
            sh.net.one_way |= {Net.PUBLIC, Net.PRIVATE}
            for _ in range(10):
                await sh.tick()

        run(go())
        assert sh.agent.peer_view == STANDBY, "beta's heartbeats stopped arriving"
        assert ("fence", "isolated") in decided(sh.events("decision")) and pg.db is DbState.DOWN
