"""The road back after a DR promotion, on the agent's fake shell: the rebuild operation (a pair node becomes the
promoted follower's standby) and the rejoin of a hot standby left past the fork."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from standby import operations as ops
from standby.act import rejoin as rj
from standby.agent.opsteps import OpError
from standby.documents import RejoinMethod
from standby.model import DbState, DrSeen, LocalPg, PgRole
from standby.observe import postgres as pgobs
from tests.unit.shell_fakes import FakePostgres, run, shell
from tests.unit.test_followers_config import follower

FOLLOWERS = {"followers": [follower("gamma", 21), follower("delta", 31, role="reporting")]}


class NotStreaming(FakePostgres):
    """A standby whose WAL receiver cannot stream (its WAL is past the new primary's fork)."""

    def read(self) -> Any:
        if self.db is DbState.STANDBY:
            return LocalPg(DbState.STANDBY, lsn=self.lsn, replay_lsn=self.lsn, streaming=False), ""
        return super().read()


def _rejoin_recorded(monkeypatch: pytest.MonkeyPatch, pg: FakePostgres) -> list[rj.Rejoining]:
    seen: list[rj.Rejoining] = []

    def fake_rejoin(cfg: Any, who: Any, **kw: Any) -> rj.RejoinResult:
        seen.append(who)
        pg.calls.append(f"rejoin with the server {pg.db.value}")
        pg.db = DbState.STANDBY
        return rj.RejoinResult(method=RejoinMethod.REWIND)

    monkeypatch.setattr(rj, "rejoin", fake_rejoin)
    return seen


def _seen_as(monkeypatch: pytest.MonkeyPatch, role: PgRole) -> None:
    monkeypatch.setattr(pgobs, "observe_peer", lambda cfg, node, *a, **kw: pgobs.PgObservation(
        node=node, role=role, observed_at=datetime.now(UTC)))


def test_a_pair_node_is_rebuilt_from_the_promoted_follower_and_left_unfenced(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pg = FakePostgres(DbState.DOWN)
    seen = _rejoin_recorded(monkeypatch, pg)
    with shell(tmp_path, monkeypatch, pg, extra=FOLLOWERS) as sh:
        async def go() -> dict[str, Any]:
            await sh.start()
            await sh.tick()
            return await sh.agent.operate("rebuild", "gamma")

        result = run(go())
        assert result["method"] == "rewind"
        assert [(w.node, w.source) for w in seen] == [("alpha", "gamma")]
        assert not sh.agent.cell.state.fenced and not sh.agent.cell.state.was_primary
        # The next block of terms (finding DR-term): above any the lost site can hold, persisted.
        assert sh.agent.cell.state.term == ops.SITE_TERMS
        assert sh.agent.store.load_state()["term"] == ops.SITE_TERMS
        # The rejoin asks once gamma answers as a primary: beta, not writable, lets it go on...
        _seen_as(monkeypatch, PgRole.UNREACHABLE)
        seen[0].confirm()
        # ...beta writable refuses: two primaries, a person decides.
        _seen_as(monkeypatch, PgRole.PRIMARY)
        with pytest.raises(rj.RejoinRefused, match="beta accepts writes too: two primaries"):
            seen[0].confirm()


def test_a_rebuild_from_a_reporting_follower_or_a_pair_node_is_refused(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pg = FakePostgres(DbState.DOWN)
    seen = _rejoin_recorded(monkeypatch, pg)
    _seen_as(monkeypatch, PgRole.UNREACHABLE)
    with shell(tmp_path, monkeypatch, pg, extra=FOLLOWERS) as sh:
        async def go() -> None:
            await sh.start()
            await sh.tick()
            with pytest.raises(OpError, match="beta is not a follower"):
                await sh.agent.operate("rebuild", "beta")
            await sh.agent.operate("rebuild", "delta")

        run(go())
        with pytest.raises(rj.RejoinRefused, match="delta is not a warm follower"):
            seen[0].confirm()


def _standby_rejoin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pg: FakePostgres,
                    stale: LocalPg | None = None) -> None:
    """`standby rejoin` on a pair node whose agent runs over ``pg``; what it did is in ``pg.calls``.
    ``stale``: the agent's last reading of its server when the rejoin arrives (from before a restart)."""
    from standby.agent import rejoinop

    monkeypatch.setattr(rejoinop, "STUCK_AFTER_S", 2.5)
    monkeypatch.setattr(rejoinop.pgobs, "postmaster_running", lambda data_dir: pg.db is not DbState.DOWN)
    _rejoin_recorded(monkeypatch, pg)
    with shell(tmp_path, monkeypatch, pg) as sh:
        async def go() -> dict[str, Any]:
            await sh.start()
            await sh.tick()
            if stale is not None:
                sh.agent.observer.pg = stale
            return await sh.agent.operate("rejoin")

        run(go())


def test_a_hot_standby_left_past_the_fork_is_stopped_and_rejoined_by_standby_rejoin(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Breaks a rejoin that refuses every running standby: beta, the hot standby of the lost site, holds WAL
    past the fork of the DR node's timeline; its agent restarts it as a standby that can never stream, and
    `standby rejoin --node beta` refused it ("already a standby") for ever. A standby takes no writes: it is
    stopped (the agent in maintenance restarts nothing) and rewound."""
    pg = NotStreaming(DbState.STANDBY)
    _standby_rejoin(tmp_path, monkeypatch, pg)
    assert pg.calls[-2:] == ["stop", "rejoin with the server down"], pg.calls


def test_roadback_race_a_stuck_standby_is_stopped_though_the_agents_last_reading_predates_its_restart(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Found by a CI run of the road back: `standby rejoin --node beta` came 40 ms after beta's agent restarted
    its server; the agent's reading still said "down", so the standby that cannot stream was not stopped, and the
    rejoin refused it. The rejoin reads the server afresh (and gives a just-started one a moment to stream)."""
    pg = NotStreaming(DbState.STANDBY)
    _standby_rejoin(tmp_path, monkeypatch, pg, stale=LocalPg(DbState.DOWN))
    assert pg.calls[-2:] == ["stop", "rejoin with the server down"], pg.calls


def test_a_streaming_standby_is_not_stopped_by_a_rejoin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pg = FakePostgres(DbState.STANDBY)
    _standby_rejoin(tmp_path, monkeypatch, pg)
    assert "stop" not in pg.calls and pg.calls[-1] == "rejoin with the server standby", pg.calls


def _rebooted_old_primary(sh: Any, monkeypatch: pytest.MonkeyPatch, dr: tuple[str, ...],
                          later: DrSeen | None = None) -> None:
    """``dr``: the writable warm followers at start; ``later``: the warm followers as the prober sees them
    afterwards (by default what ``dr`` says, every one answering)."""
    from standby.agent import superseded
    from standby.agent.probers import DrAnswer
    from standby.decide import State

    monkeypatch.setattr(superseded, "dr_primaries", lambda cfg: dr)
    # Asked while its server is down, as it stays here, in the term it had when its host died.
    sh.agent.probers.dr_answer = DrAnswer(later or (DrSeen.WRITABLE if dr else DrSeen.CLEAR), DbState.DOWN, term=1)
    sh.agent.store.save_state(State(term=1, was_primary=True))  # alpha was the primary when its host died


async def _start_as_the_agent_does(sh: Any) -> None:
    from standby.agent import superseded

    a = sh.agent
    await sh.start()
    await a.observer.postgres()
    await superseded.fence_if_superseded(a.cfg, a.node, a.cell, a.pg.db, a._in_probe, a._in_state, a.event)


def test_a_rebooted_old_primary_hearing_its_standby_stays_down_while_the_dr_node_serves(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Breaks an agent that trusts its own state after its site came back: alpha's and beta's hosts rebooted
    while gamma, promoted by hand, serves. Alpha's agent hears beta as a standby in its own term and restarts
    alpha's server as a primary: two writable nodes. Fenced at start, it starts nothing."""
    pg = FakePostgres(DbState.DOWN)
    with shell(tmp_path, monkeypatch, pg, extra=FOLLOWERS) as sh:
        _rebooted_old_primary(sh, monkeypatch, ("gamma",))

        async def go() -> None:
            await _start_as_the_agent_does(sh)
            for _ in range(40):
                await sh.tick()

        run(go())
        assert "start" not in pg.calls, pg.calls
        assert sh.agent.state.fenced and [e["by"] for e in sh.events("fenced_superseded")] == [["gamma"]]


def test_without_a_dr_primary_a_rebooted_old_primary_restarts_as_before(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same reboot with no warm follower writable: the pair's rule stands (crash recovery in place)."""
    pg = FakePostgres(DbState.DOWN)
    with shell(tmp_path, monkeypatch, pg, extra=FOLLOWERS) as sh:
        _rebooted_old_primary(sh, monkeypatch, ())

        async def go() -> None:
            await _start_as_the_agent_does(sh)
            for _ in range(40):
                await sh.tick()

        run(go())
        assert "start" in pg.calls and not sh.agent.state.fenced


def test_dr_restart_a_rebooted_old_primary_stays_down_while_a_warm_follower_is_silent(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Finding DR-restart in the shell: the site is back before its WAN; at start gamma does not answer, so
    nothing fences; the restart then waits for gamma's answer (policy_for sets dr_watch with a warm follower)."""
    pg = FakePostgres(DbState.DOWN)
    with shell(tmp_path, monkeypatch, pg, extra=FOLLOWERS) as sh:
        _rebooted_old_primary(sh, monkeypatch, (), later=DrSeen.UNKNOWN)

        async def go() -> None:
            await _start_as_the_agent_does(sh)
            for _ in range(40):
                await sh.tick()

        run(go())
        assert "start" not in pg.calls and not sh.agent.state.fenced, pg.calls
        assert sh.agent.policy.dr_watch


@pytest.mark.parametrize(("state", "db", "asked"), [
    ({"was_primary": True}, DbState.DOWN, True),  # a rebooted primary: its restart is in question
    # it watched its own server die: the site stayed
    ({"was_primary": True, "primary_this_run": True}, DbState.DOWN, False),
    ({"fenced": True, "resumable": True, "peer_standby_since": 5.0}, DbState.DOWN, True),  # the peer lets it resume
    ({"fenced": True, "resumable": True}, DbState.DOWN, False),  # nothing to resume yet: no question every second
    ({"fenced": True}, DbState.DOWN, False),  # fenced by a person or superseded: only a rejoin ends it
    ({}, DbState.DOWN, False),  # a standby that stopped
    ({}, DbState.PRIMARY, True),  # a running primary (rule 7): always
    ({}, DbState.STANDBY, True),  # a running hot standby: it may promote at any moment (finding DR-window)
    ({"fenced": True}, DbState.STANDBY, False),  # a fenced one never promotes
])
def test_dr_restart_the_warm_followers_are_asked_only_while_a_restart_is_in_question(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, state: dict[str, Any], db: DbState, asked: bool) -> None:
    import asyncio

    from standby.agent import probers
    from standby.decide import State

    calls: list[str] = []
    with shell(tmp_path, monkeypatch, FakePostgres(DbState.DOWN), extra=FOLLOWERS) as sh:
        stop = asyncio.Event()
        monkeypatch.setattr(probers, "DrWatch", _fake_watch(calls, lambda: DrSeen.CLEAR))
        monkeypatch.setattr(probers, "DR_EVERY_S", 0.0)

        async def go() -> None:
            task = asyncio.ensure_future(sh.agent.probers.dr(stop, lambda: State(**state), lambda: db))
            await asyncio.sleep(0.05)
            task.cancel()  # as the agent stops its loops: the next question is DR_EVERY_S away
            await asyncio.gather(task, return_exceptions=True)

        run(go())
        assert ("asked" in calls) is asked, calls
        assert calls[-1:] == ["closed"]  # its kept connections closed when the agent stops
        answer = sh.agent.probers.dr_answer
        assert (answer and answer.seen) is (DrSeen.CLEAR if asked else None)


def _fake_watch(calls: list[str], answer: Callable[[], DrSeen]) -> type:
    class FakeWatch:
        def __init__(self, cfg: Any) -> None:
            pass

        async def seen(self) -> DrSeen:
            calls.append("asked")
            return answer()

        def close(self) -> None:
            calls.append("closed")

    return FakeWatch


def test_rule7_an_answer_asked_while_a_standby_is_not_read_after_this_node_is_promoted(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The switchback: the DR node still wrote when the question left, this node was promoted once it had
    stopped. "Writable" came back about a node that no longer is: it must not fence the new primary."""
    import asyncio

    from standby.agent import probers
    from standby.decide import State

    role = [DbState.DOWN]
    calls: list[str] = []

    def answer() -> DrSeen:
        role[0] = DbState.PRIMARY  # promoted while the question was out
        return DrSeen.WRITABLE

    with shell(tmp_path, monkeypatch, FakePostgres(DbState.DOWN), extra=FOLLOWERS) as sh:
        stop = asyncio.Event()
        monkeypatch.setattr(probers, "DrWatch", _fake_watch(calls, answer))
        monkeypatch.setattr(probers, "DR_EVERY_S", 10.0)

        async def go() -> None:
            task = asyncio.ensure_future(sh.agent.probers.dr(stop, lambda: State(was_primary=True), lambda: role[0]))
            await asyncio.sleep(0.05)
            task.cancel()  # as the agent stops its loops: the next question is DR_EVERY_S away
            await asyncio.gather(task, return_exceptions=True)

        run(go())
        assert calls[0] == "asked" and sh.agent.probers.dr_for(DbState.PRIMARY) is None
