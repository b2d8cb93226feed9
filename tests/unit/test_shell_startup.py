"""The agent's start-up, in seconds: what it refuses, what it takes over from the agent before it, and
what it starts. Real decisions and parts; a fake clock, network, PostgreSQL and kernel (shell_fakes).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from standby.act import services
from standby.agent.heartbeat import Heartbeat, encode
from standby.agent.node import Agent, RefusedToStart
from standby.config import Placement
from standby.model import DbState, Net
from tests.unit.shell_fakes import STANDBY, FakeKernel, FakePostgres, Shell, run, shell

SERVICE_IP = "192.0.2.100"


def _restarted(sh: Shell, clean: bool, after_s: float = 2.0) -> None:
    """Alpha's agent runs as primary and ends (``clean``: its last liveness record says so, as a clean stop
    writes it; else as a killed process leaves it); no agent runs for ``after_s``; a new one starts."""
    async def steps() -> None:
        await sh.start()
        for _ in range(3):
            await sh.tick()

    run(steps())
    if clean:
        sh.agent.disk_pool.submit(lambda: None).result()  # the last step's liveness is written first
        sh.agent.store.write_liveness(sh.agent.boot, True, sh.clock.t)
    sh.clock.advance(after_s)
    sh.restart()
    run(steps())


def test_shell_an_agent_that_died_uncleanly_is_followed_as_after_a_stall(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Nobody decided for this primary while no agent ran: the next agent fences first, as after a freeze."""
    pg = FakePostgres(DbState.PRIMARY)
    with shell(tmp_path, monkeypatch, pg, FakeKernel({SERVICE_IP})) as sh:
        _restarted(sh, clean=False)
        assert sh.events("agent_started")[-1]["unattended_for_s"] >= 2.0
        assert [(e["action"], e["reason"]) for e in sh.events("decision")][:1] == [("fence", "resumed_after_freeze")]
        assert pg.db is DbState.DOWN and sh.kernel.held == set()


def test_shell_an_agent_after_a_clean_stop_carries_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The agent before said goodbye (it stopped on purpose, deciding to the last): nothing was missed."""
    pg = FakePostgres(DbState.PRIMARY)
    with shell(tmp_path, monkeypatch, pg, FakeKernel({SERVICE_IP})) as sh:
        _restarted(sh, clean=True)
        assert sh.events("agent_started")[-1]["unattended_for_s"] == 0
        assert sh.events("decision") == [] and pg.db is DbState.PRIMARY and sh.kernel.held == {SERVICE_IP}


def _from_peer_with_digest(sh: Shell, digest: str, net: Net) -> tuple[bytes, str]:
    sh.peer_seq += 1
    hb = Heartbeat(sh.cfg.cluster, "beta", sh.peer_boot, sh.peer_seq, net, digest, STANDBY, None)
    return encode(hb, sh.agent.key), str(getattr(sh.cfg.nodes["beta"], net.value).ip)


def test_shell_a_peer_with_another_configuration_stops_the_agent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every heartbeat from the peer carries another configuration's digest: the agent refuses to go on and
    says what to fix, before it decides anything."""
    pg = FakePostgres(DbState.PRIMARY)
    with shell(tmp_path, monkeypatch, pg, FakeKernel({SERVICE_IP})) as sh:
        async def go() -> None:
            await sh.start()
            for net in Net:
                sh.net.deliver(net, *_from_peer_with_digest(sh, "0" * 64, net))
            await sh.agent._step()

        with pytest.raises(RefusedToStart, match=r"different configuration.*identical on both nodes"):
            run(go())
        assert sh.agent.decisions == 0 and sh.events("decision") == [] and pg.db is DbState.PRIMARY


@pytest.mark.parametrize(("held", "placement"), [(set(), Placement.EVERYWHERE), ({SERVICE_IP}, None)])
def test_shell_at_start_up_the_services_that_should_run_here_are_started(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, held: set[str], placement: Placement | None) -> None:
    """Without the service IPs: the services placed everywhere. Holding them (an agent restart): every
    service the addresses point at, too."""
    sh = Shell(tmp_path, monkeypatch, FakePostgres(DbState.PRIMARY), FakeKernel(held))
    started: list[Placement | None] = []

    def start_all(cfg: Any, node: str, where: Placement | None) -> list[services.CommandResult]:
        started.append(where)
        return []

    monkeypatch.setattr(services, "start_all", start_all)
    agent: Agent = sh.agent

    async def step() -> None:
        if started:
            agent.stop()

    async def go() -> None:
        await asyncio.wait_for(agent.run(), 20)

    monkeypatch.setattr(agent, "_step", step)
    monkeypatch.setattr(agent.link, "open", lambda: None)
    try:
        asyncio.run(go())
    finally:
        sh.close()
    assert started == [placement]
