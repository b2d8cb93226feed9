"""Async chaos seed 77: a primary host frozen 6.8 s took writes for ~0.9 s after the thaw.

Nothing in ``async`` holds a thawed old primary's commits back; only its own agent's fence does. The
agent decided to fence soon after the thaw, then waited for the decision to be on disk before asking
PostgreSQL to stop: with another program keeping the disk busy, that fsync alone took 0.3 s in the lab
(the decision recorded 0.37 s after the thaw, its observation 3 ms of it), all of it a window with
two writers. The stop request now goes out first; why that is safe is argued in standby.act.fence.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from standby.decide import State
from standby.model import DbState
from tests.unit.shell_fakes import FakeKernel, FakePostgres, Shell, run, shell

SERVICE_IP = "192.0.2.100"


def _frozen_then_thawed(sh: Shell, freeze_s: float = 6.8) -> list[tuple[State, list[str]]]:
    """Alpha serves, stalls for ``freeze_s``, steps again; what PostgreSQL had been asked at each state write."""
    at_write: list[tuple[State, list[str]]] = []
    save = sh.agent.store.save_state

    def save_watched(state: State) -> None:
        at_write.append((state, list(sh.pg.calls)))
        save(state)

    sh.monkeypatch.setattr(sh.agent.store, "save_state", save_watched)

    async def steps() -> None:
        await sh.start()
        for _ in range(5):
            await sh.tick()
        await sh.tick(advance=freeze_s)

    run(steps())
    return at_write


def test_chaos_seed_77_a_thawed_primary_asks_its_server_to_stop_before_the_fence_is_on_disk(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pg = FakePostgres(DbState.PRIMARY)
    with shell(tmp_path, monkeypatch, pg, FakeKernel({SERVICE_IP})) as sh:
        writes = _frozen_then_thawed(sh)
        fenced = [calls for state, calls in writes if state.fenced]
        assert fenced, "the thawed primary did not fence"
        assert "stop_requested" in fenced[0], f"PostgreSQL was asked nothing before the fence's state write: {fenced[0]}"
        # The full stop (escalating, waiting for the server to go) still follows, after the write.
        assert pg.calls.index("stop_requested") < pg.calls.index("stop") and pg.db is DbState.DOWN
        assert next((e["action"], e["reason"]) for e in sh.events("decision")) == ("fence", "resumed_after_freeze")
        # A server that served on: its stop escalates (fast, immediate, SIGKILL), never SIGKILL at once.
        assert pg.fence_stops == [False]



class _Died(Exception):
    """The agent's process ends here (a crash between the stop request and the state write)."""


def test_chaos_seed_77_an_agent_that_dies_between_the_stop_request_and_the_state_write_never_restarts_the_server(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Why asking first is safe: the next agent finds the server down, "fenced" not written, the peer
    silent. It must not start the server as primary: the peer may have been promoted meanwhile."""
    pg = FakePostgres(DbState.PRIMARY)
    with shell(tmp_path, monkeypatch, pg, FakeKernel({SERVICE_IP})) as sh:
        save = sh.agent.store.save_state

        def die_on_fence(state: State) -> None:
            if state.fenced:
                raise _Died
            save(state)

        monkeypatch.setattr(sh.agent.store, "save_state", die_on_fence)

        async def until_death() -> None:
            await sh.start()
            for _ in range(5):
                await sh.tick()
            with pytest.raises(_Died):
                await sh.tick(advance=6.8)

        run(until_death())
        assert pg.calls == ["stop_requested"]
        pg.db = DbState.DOWN  # the fast shutdown ends
        sh.clock.advance(1.0)
        sh.restart()

        async def next_agent() -> None:
            await sh.start()
            for _ in range(20):
                await sh.tick(peer=None)

        run(next_agent())
        assert "start" not in pg.calls and pg.db is DbState.DOWN
        assert not any(e["action"] == "restart_pg" for e in sh.events("decision"))
