"""An operator's operation and the decisions around it, on the fake shell (chaos seed 103).

In that campaign a FENCE decided on a stale observation, just before a rejoin, waited behind the rejoin
and then stopped the standby the rejoin had just started; and the reading of PostgreSQL kept from
before the rejoin (a primary) went out under the term the rejoin had raised, so the real primary
stepped down: the pair had no primary. What was decided or observed before an operation must not
act after it.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import pytest

from standby.act import rejoin as rj
from standby.documents import RejoinMethod
from standby.model import DbState, Net
from tests.unit.shell_fakes import FakeKernel, FakePostgres, run, shell, view

SERVICE_IP = "192.0.2.100"


class SlowStop(FakePostgres):
    """Its first stop waits to be let go; its reads fail while ``unreadable`` (a server being stopped)."""

    def __init__(self) -> None:
        super().__init__(DbState.PRIMARY)
        self.let_go = threading.Event()
        self.unreadable = False

    def stop(self) -> None:
        if self.calls.count("stop") == 0:
            self.let_go.wait(10)
        super().stop()

    def read(self) -> Any:
        if self.unreadable:
            raise OSError("server closed the connection unexpectedly")
        return super().read()


def test_chaos_seed_103_a_fence_decided_before_a_rejoin_does_not_stop_the_rejoined_standby(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pg = SlowStop()

    def fake_rejoin(cfg: Any, who: rj.Rejoining, **kw: Any) -> rj.RejoinResult:
        pg.db, pg.unreadable = DbState.STANDBY, False  # rewound and streaming from the new primary
        return rj.RejoinResult(method=RejoinMethod.REWIND)

    monkeypatch.setattr(rj, "rejoin", fake_rejoin)
    with shell(tmp_path, monkeypatch, pg, FakeKernel({SERVICE_IP})) as sh:
        agent = sh.agent
        took_over = view(DbState.PRIMARY, term=2, services=True)

        async def go() -> dict[str, Any]:
            await sh.start()
            await sh.tick()
            pg.unreadable = True  # from here the last reading (a primary) is what the agent keeps
            sh.clock.advance(0.2)
            for net in Net:
                sh.net.deliver(net, *sh._from_peer(took_over, net))
            await agent._step()  # the peer took over in a newer term: FENCE (superseded); its stop hangs
            await asyncio.sleep(0.05)
            op = asyncio.ensure_future(agent.operate("rejoin"))  # a person asks for a rejoin meanwhile
            await asyncio.sleep(0.05)
            async with agent.turn:  # the step that runs just as the first fence ends...
                pg.let_go.set()
                while pg.calls.count("stop") < 1:
                    await asyncio.sleep(0.01)
                await asyncio.sleep(0.05)  # the first fence ends; the rejoin has its role and waits for the turn
                sh.clock.advance(0.2)
                for net in Net:
                    sh.net.deliver(net, *sh._from_peer(took_over, net))
                await agent._step_locked()  # ...decides FENCE again on the kept reading ("still running")
            result = await op
            # Right after the operation, before any step: the agent reads the server as it is now.
            assert agent.observer.pg.db is DbState.STANDBY
            await agent.executor.drain()
            return result

        result = run(go())
        assert result["method"] == "rewind"
        assert pg.calls.count("stop") == 1, pg.calls  # the fence decided before the rejoin did not run after it
        assert pg.db is DbState.STANDBY
        assert [e["action"] for e in sh.events("action_superseded")] == ["fence"]
