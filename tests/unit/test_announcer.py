"""The periodic gratuitous ARP for the service IPs (agent.probers.announcer) speaks only for a decision made after
its own wait.

CI run 57 (a client's query through the service IP was never told that the frozen primary had stopped) led
to packet captures of the frozen-primary case on the lab's switch: in 7 of 11 thaws alpha sent a gratuitous ARP
for the service IP 6-15 ms after its processes resumed, before its first step decided to fence and let go.
The announcer's five-second wait had run out during the pause and it read the state from before it, which
still said "services here": the clients' ARP caches went back to alpha's MAC, away from beta, which had
taken the address over; once alpha removed it, their packets went to a node without the address until beta's
next announcement, up to five seconds later.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from standby.agent import probers as probers_mod
from standby.agent.probers import Probers
from tests.unit.configs import example_with_secrets


class _Role:
    """Only what the announcer may use of the service role: nothing (it announces through ``in_probe``)."""


def _probers(tmp_path: Any, announced: list[str]) -> Probers:
    from standby import config
    from standby.agent.policy import policy_for

    raw, _ = example_with_secrets(tmp_path)
    cfg = config.parse(raw)

    async def in_probe(fn: Any, *args: Any) -> Any:
        announced.append(str(args[0].address))
        return None

    async def in_svc(fn: Any, *args: Any) -> Any:
        raise AssertionError("the announcer runs no service command")

    return Probers(cfg, "alpha", policy_for(cfg, "alpha", False), _Role(), in_svc, in_probe,  # type: ignore[arg-type]
                   clock=lambda: 0.0, event=lambda *a, **k: None)


def test_ci57_a_stale_holding_after_a_pause_announces_nothing_until_a_step_has_decided(
        tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(probers_mod, "ANNOUNCE_EVERY_S", 0.01)
    announced: list[str] = []
    p = _probers(tmp_path, announced)
    holding = [True]  # the state from before the pause: "services here"
    stepped = asyncio.Event()

    async def go() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(p.announcer(stop, lambda: holding[0], stepped.wait))
        await asyncio.sleep(0.1)  # the wait ran out many times over; no step has run since
        assert announced == [], "announced on a state no step had confirmed since the wait"
        holding[0] = False  # the first step after the pause: fence, let go
        stepped.set()
        stepped.clear()
        await asyncio.sleep(0.05)
        assert announced == []
        holding[0] = True  # taken again later, by a decision
        for _ in range(3):
            stepped.set()
            stepped.clear()
            await asyncio.sleep(0.03)
        assert announced, "a node that holds the addresses, as its steps say, keeps announcing them"
        stop.set()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(go())


def test_ci57_the_agent_pulses_its_step_signal_once_per_completed_step(tmp_path: Any,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """What the announcer waits on: set by each step that completes (a waiter begun before it wakes), and
    left clear, so that the next wait is for the next step."""
    from standby.model import DbState
    from tests.unit.shell_fakes import FakeKernel, FakePostgres, shell

    with shell(tmp_path, monkeypatch, FakePostgres(DbState.PRIMARY), FakeKernel({"192.0.2.100"})) as sh:
        async def go() -> None:
            await sh.start()
            waiter = asyncio.ensure_future(sh.agent.stepped.wait())
            await asyncio.sleep(0)
            assert not waiter.done()
            await sh.tick()
            await asyncio.sleep(0)
            assert waiter.done()
            assert not sh.agent.stepped.is_set()  # the next wait waits for the next step

        asyncio.run(go())
