"""Found chasing CI run 57: the API's checks spoke for a state no decision had confirmed since a pause.

``GET /primary`` (what HAProxy routes writes by) is answered on the API's own thread from the state the
decision loop last left. A thawed primary's API answered "primary" 0.03-0.49 s after the thaw (five lab
thaws), before its first step fenced it: new connections routed to a server about to be fenced (in
``async``, writes the new primary never sees). The same held while a step that had decided to fence was
writing that decision to disk (0.3 s on a busy disk: async chaos seed 77). A check now vouches only for
what a completed step has looked at (standby.vouch).
"""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path
from typing import Any

import pytest

from standby import api
from standby.decide import State, stall_limit
from standby.model import DbState
from standby.web.server import Request
from tests.unit.shell_fakes import INTERVAL_S, FakeKernel, FakePostgres, Shell, run, shell, view

SERVICE_IP = "192.0.2.100"


def _check(sh: Shell, path: str) -> tuple[int, dict[str, Any]]:
    """The check as a load balancer gets it, answered by the handler the API routes ``path`` to."""
    routes = api.Api(sh.agent)
    handler = {"/primary": routes.primary, "/replica": routes.replica}[path]

    async def ask() -> Any:
        return await handler(Request.of("GET", path))

    resp = asyncio.run(ask())  # its own loop, on whichever thread asks (the state thread, in one test)
    return resp.status, json.loads(resp.body)


def _serving(sh: Shell, steps: int = 5) -> None:
    async def go() -> None:
        await sh.start()
        for _ in range(steps):
            await sh.tick()

    run(go())


def _limit(sh: Shell) -> float:
    return stall_limit(sh.agent.policy)


# -- the finding, through the handler ----------------------------------------------------------


def test_ci57_a_thawed_primary_does_not_vouch_for_itself_before_a_step_has_looked(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pg = FakePostgres(DbState.PRIMARY)
    with shell(tmp_path, monkeypatch, pg, FakeKernel({SERVICE_IP})) as sh:
        _serving(sh)
        assert _check(sh, "/primary")[0] == 200
        sh.clock.advance(_limit(sh) + 1.0)  # the whole process was stopped; the API's thread runs first
        status, body = _check(sh, "/primary")
        assert status == 503, f"a thawed primary vouched for itself before any step looked: {body}"
        assert body["vouched"] == "paused" and body["node"] == "alpha", body
        sh.agent.link.send(sh.agent._advertised())  # its heartbeat sender ran next: the pause is still unlooked at
        assert _check(sh, "/primary")[0] == 503
        run(sh.tick(advance=0.0))  # the first step: it fences for the stall
        status, body = _check(sh, "/primary")
        assert status == 503 and body["vouched"] == "fenced", body
        assert ("fence", "resumed_after_freeze") in {(e["action"], e["reason"]) for e in sh.events("decision")}


@pytest.mark.parametrize("step_first", [True, False], ids=["step-before-the-read", "step-after-the-read"])
def test_ci57_a_step_that_takes_the_pause_while_a_check_reads_the_agent_cannot_make_it_vouch(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, step_first: bool) -> None:
    """The check reads the agent's parts one after another on its own thread; the loop may run between any two
    reads. Here the first step after the thaw observes (and so takes the pause from the link) in the middle
    of the check's reads: whichever part the check reads after that, it must still see the pause."""
    pg = FakePostgres(DbState.PRIMARY)
    with shell(tmp_path, monkeypatch, pg, FakeKernel({SERVICE_IP})) as sh:
        _serving(sh)
        sh.clock.advance(_limit(sh) + 1.0)
        link, agent = sh.agent.link, sh.agent
        link.send(agent._advertised())  # the sender ran first after the thaw: only the link's record holds the pause
        read = link.pending_gap

        def observe_elsewhere() -> None:  # the loop's thread, between two of the check's reads
            t = threading.Thread(target=lambda: asyncio.run(agent._observe(sh.clock.t)))
            t.start()
            t.join(5)

        stepped: list[bool] = []

        def read_with_a_step_beside() -> float:
            if stepped:  # the step's own read, or the check's after it
                return read()
            stepped.append(True)
            if step_first:
                observe_elsewhere()
                return read()
            got = read()
            observe_elsewhere()
            return got

        monkeypatch.setattr(link, "pending_gap", read_with_a_step_beside)
        status, body = _check(sh, "/primary")
        assert status == 503 and body["vouched"] == "paused", body
        assert agent.in_hand.gap > _limit(sh)  # the step did take the pause


def test_ci57_a_pause_within_the_stall_limit_keeps_the_check_answering(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A busy machine's short pause cannot have let the peer take over (the stall rule's argument): the check
    must not flap on it, or a load balancer would cut writes on every slow moment."""
    pg = FakePostgres(DbState.PRIMARY)
    with shell(tmp_path, monkeypatch, pg, FakeKernel({SERVICE_IP})) as sh:
        _serving(sh)
        sh.clock.advance(_limit(sh) - INTERVAL_S)
        status, body = _check(sh, "/primary")
        assert status == 200 and body["vouched"] == "primary", body


def test_ci57_a_step_that_decided_to_fence_stops_the_check_before_its_decision_is_on_disk(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Not a pause: the peer is heard primary in a newer term. The fence is decided and written to disk before
    the agent's state says "fenced"; a check answered during that write must already refuse."""
    pg = FakePostgres(DbState.PRIMARY)
    with shell(tmp_path, monkeypatch, pg, FakeKernel({SERVICE_IP})) as sh:
        _serving(sh)
        during: list[tuple[int, dict[str, Any]]] = []
        save = sh.agent.store.save_state

        def save_watched(state: State) -> None:
            if state.fenced:
                during.append(_check(sh, "/primary"))  # on the state thread, as the API's own thread would
            save(state)

        monkeypatch.setattr(sh.agent.store, "save_state", save_watched)
        run(sh.tick(view(DbState.PRIMARY, term=5, services=True)))
        assert during, "no fence was decided"
        assert during[0][0] == 503 and during[0][1]["vouched"] == "fenced", during[0]


def test_ci57_a_thawed_standby_does_not_vouch_for_its_reads_before_a_step_has_looked(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The read check's lag is the pre-pause one until a step reads the server again."""
    pg = FakePostgres(DbState.STANDBY)
    with shell(tmp_path, monkeypatch, pg) as sh:
        async def go() -> None:
            await sh.start()
            for _ in range(5):
                await sh.tick(view(DbState.PRIMARY, services=True))

        run(go())
        assert _check(sh, "/replica")[0] == 200
        sh.clock.advance(_limit(sh) + 1.0)
        status, body = _check(sh, "/replica")
        assert status == 503 and body["vouched"] == "paused", body
        run(sh.tick(view(DbState.PRIMARY, services=True), advance=0.0))
        assert _check(sh, "/replica")[0] == 200

