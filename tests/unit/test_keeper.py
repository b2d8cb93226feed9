"""The address keeper (agent/keeper.py) and the probe it relies on: findings H2 and H3 of the home addresses."""

from __future__ import annotations

import asyncio
import ipaddress
from typing import Any

import pytest

from standby.act import addresses
from standby.agent.keeper import AddressKeeper
from standby.config import ServiceIP
from standby.observe import probes

SIP = ServiceIP(address=ipaddress.IPv4Interface("192.0.2.21/24"), interface="eth0")


def test_h2_a_probe_over_a_link_without_carrier_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    looks = iter([True, False])  # the cable goes during the probe
    monkeypatch.setattr(addresses, "carrier", lambda interface: next(looks))
    monkeypatch.setattr(probes, "arp_holders", lambda interface, address: set())
    with pytest.raises(probes.ProbeError, match="no carrier"):
        addresses.answered_elsewhere(SIP)
    monkeypatch.setattr(addresses, "carrier", lambda interface: False)
    with pytest.raises(probes.ProbeError, match="no carrier"):
        addresses.answered_elsewhere(SIP)
    monkeypatch.setattr(addresses, "carrier", lambda interface: True)
    monkeypatch.setattr(probes, "arp_holders", lambda interface, address: {"52:54:00:00:00:01"})
    assert addresses.answered_elsewhere(SIP) == {"52:54:00:00:00:01"}


class Kernel:
    """The keeper's three ways out: the service thread (add, remove), the probe thread (ARP), events."""

    def __init__(self, others: set[str]) -> None:
        self.others, self.calls, self.events = others, [], []
        self.probing = asyncio.Event()
        self.release = asyncio.Event()

    async def in_svc(self, fn: Any, *args: Any) -> Any:
        self.calls.append(fn.__name__)

    async def in_probe(self, fn: Any, *args: Any) -> Any:
        self.calls.append(fn.__name__)
        if fn is addresses.answered_elsewhere:
            self.probing.set()
            await self.release.wait()
            return set(self.others)
        return None

    def event(self, name: str, **detail: Any) -> None:
        self.events.append((name, detail))


async def _settle() -> None:
    """Let the keeper's task run to its end (it awaits only the fakes above)."""
    for _ in range(10):
        await asyncio.sleep(0)


def keeper(k: Kernel, look: bool = False) -> AddressKeeper:
    kp = AddressKeeper(SIP, "adopted_home_address", k.in_svc, k.in_probe, lambda: 0.0, k.event, look=look)
    kp.held = False
    return kp


def test_h2_a_take_the_decision_gave_up_during_its_probe_adds_nothing() -> None:
    async def run() -> tuple[Kernel, AddressKeeper]:
        k = Kernel(others=set())
        kp = keeper(k)
        kp.follow(True, True)
        await k.probing.wait()
        kp.follow(False, False)  # the next step: the link went down, let go
        k.release.set()
        await _settle()
        return k, kp

    k, kp = asyncio.run(run())
    assert "add" not in k.calls and kp.held is False and not kp.busy
    assert [e for e, _ in k.events] == ["adopted_home_address_take_dropped"]  # the history says so (finding R5)


def test_a_take_still_wanted_after_a_free_probe_adds_the_address() -> None:
    async def run() -> tuple[Kernel, AddressKeeper]:
        k = Kernel(others=set())
        kp = keeper(k)
        kp.follow(True, True)
        await k.probing.wait()
        kp.follow(True, True)  # still wanted: nothing new starts while busy
        k.release.set()
        await _settle()
        return k, kp

    k, kp = asyncio.run(run())
    assert "add" in k.calls and kp.held is True


def test_h3_a_held_address_someone_else_answers_for_is_contested_not_announced() -> None:
    async def run() -> tuple[Kernel, AddressKeeper]:
        k = Kernel(others={"52:54:00:00:00:01"})
        k.release.set()
        kp = keeper(k, look=True)
        kp.held = True
        kp.follow(True, False)  # held and wanted: time for the periodic look
        await _settle()
        return k, kp

    k, kp = asyncio.run(run())
    assert kp.contested and "announce" not in k.calls
    assert [e for e, _ in k.events] == ["adopted_home_address_contested"]


def test_r1_a_restarted_adopter_says_it_may_hold_the_address_until_it_has_read_the_kernel() -> None:
    """Its first heartbeats leave before its first step: "not adopted" then would let the owner add an address
    this node may still have (the second reader's finding R1)."""
    import tomllib
    from pathlib import Path

    from standby import config
    from standby.agent.home_ip import HomeMover

    d = tomllib.loads((Path(__file__).parents[2] / "etc" / "standby.example.toml").read_text())
    d["nodes"]["alpha"]["home_address"], d["nodes"]["beta"]["home_address"] = "192.0.2.21/24", "192.0.2.22/24"
    k = Kernel(others=set())
    mover = HomeMover(config.parse(d), "beta", k.in_probe, k.in_svc, k.in_probe, lambda: 0.0, k.event)
    assert mover.adopted is not None and mover.adopted.held is None
    assert mover.advertised() is True  # unknown counts as held
    mover.adopted.held = False
    assert mover.advertised() is False
    mover.adopted.held = True
    assert mover.advertised() is True


def test_a_refused_take_probes_again_only_after_a_pause() -> None:
    """Another host answers: the next steps do not probe again at once (each probe holds a probe thread)."""
    now = [0.0]

    async def run() -> Kernel:
        k = Kernel(others={"52:54:00:00:00:01"})
        k.release.set()
        kp = AddressKeeper(SIP, "adopted_home_address", k.in_svc, k.in_probe, lambda: now[0], k.event)
        kp.held = False
        for t in (0.0, 0.2, 0.4, 1.0, 2.5):
            now[0] = t
            kp.follow(True, True)
            await _settle()
        return k

    k = asyncio.run(run())
    assert k.calls.count("answered_elsewhere") == 2  # at 0.0 and at 2.5
    assert [e for e, _ in k.events] == ["adopted_home_address_take_refused"]  # said once while it lasts
