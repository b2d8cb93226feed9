"""`standby status` looks at everything at once: with the peer's host down each look ends in its own timeout,
and one after another they took 8.5 s (a lab with alpha crashed, 2026-12-04) where the longest is 2 s.

The looks are replaced by fakes that wait until every other kind of look is under way too: run one after
another, the first waits in vain and the test fails."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest

from standby import config, status
from standby.model import PgRole
from standby.observe import postgres as obs
from standby.observe.postgres import PgObservation

EXAMPLE = Path(__file__).parents[2] / "etc" / "standby.example.toml"
NOW = datetime(2026, 1, 1, tzinfo=UTC)
WAIT_S = 5.0  # how long a look waits for the others before it says it ran alone


class Together:
    """Each look calls ``arrive(kind)`` and returns only once every kind has arrived (or fails after WAIT_S)."""

    def __init__(self, kinds: set[str]) -> None:
        self.kinds, self.arrived = kinds, set[str]()
        self.cond = threading.Condition()

    def arrive(self, kind: str) -> None:
        with self.cond:
            self.arrived.add(kind)
            self.cond.notify_all()
            if not self.cond.wait_for(lambda: self.kinds <= self.arrived, timeout=WAIT_S):
                raise AssertionError(f"{kind} ran without {sorted(self.kinds - self.arrived)} beside it")


@pytest.fixture
def cfg() -> config.Config:
    return config.load(EXAMPLE)


def _pg(node: str, role: PgRole, via: str = "socket") -> PgObservation:
    return PgObservation(node=node, role=role, observed_at=NOW, via=via)


@pytest.fixture
def looks(monkeypatch: pytest.MonkeyPatch, cfg: config.Config) -> Iterator[Together]:
    together = Together({"local server", "peer server", "agent alpha", "agent beta", "arp"})

    def looking(kind: str, answer: Callable[..., Any]) -> Callable[..., Any]:
        def look(*args: Any, **kwargs: Any) -> Any:
            together.arrive(kind)
            return answer(*args, **kwargs)
        return look

    monkeypatch.setattr(obs, "observe_local", looking("local server", lambda c, n: _pg(n, PgRole.PRIMARY)))
    monkeypatch.setattr(obs, "observe_peer", looking("peer server", lambda c, n: _pg(n, PgRole.UNREACHABLE, "")))
    monkeypatch.setattr(obs, "pair_facts", lambda c, n, seen: {})
    monkeypatch.setattr(status, "agent_status", lambda c, n: looking(f"agent {n}", lambda: None)())
    monkeypatch.setattr(status.probes, "arp_holders", looking("arp", lambda iface, address, timeout_s: set()))
    interfaces = {sip.interface for sip in cfg.service_ips}
    monkeypatch.setattr(status.addresses, "local_addresses", lambda: {i: set() for i in interfaces})
    yield together


def test_status_with_the_peer_down_asks_every_server_agent_and_address_at_once(
        cfg: config.Config, looks: Together) -> None:
    seen = status.collect(cfg, "alpha")
    assert looks.arrived == looks.kinds
    assert seen.pg["beta"].role is PgRole.UNREACHABLE and seen.agents == {"alpha": None, "beta": None}
    assert all(ip.probed for ip in seen.ips)
    doc = status.assemble(cfg, seen)
    assert doc.nodes["beta"].postgres.state is PgRole.UNREACHABLE


class _Conn:
    def __enter__(self) -> _Conn:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


def _networks_at_once(monkeypatch: pytest.MonkeyPatch, private_answers: bool) -> list[str]:
    """observe_peer with both networks' connections waiting for each other; returns the networks asked."""
    both = threading.Barrier(2, timeout=WAIT_S)
    asked: list[str] = []

    def connect_peer(cfg: config.Config, node: str, network: str = "private") -> _Conn:
        asked.append(network)
        both.wait()  # a BrokenBarrierError here: the other network was not asked beside this one
        if network == "private" and not private_answers:
            raise psycopg.OperationalError("connection timeout expired")
        return _Conn()

    monkeypatch.setattr(obs, "connect_peer", connect_peer)
    monkeypatch.setattr(obs, "read", lambda conn, node, via: _pg(node, PgRole.PRIMARY, via))
    return asked


def test_the_peers_server_is_asked_on_both_networks_at_once_and_the_private_answer_wins(
        monkeypatch: pytest.MonkeyPatch, cfg: config.Config) -> None:
    asked = _networks_at_once(monkeypatch, private_answers=True)
    seen = obs.observe_peer(cfg, "beta")
    assert sorted(asked) == ["private", "public"]
    assert seen.role is PgRole.PRIMARY and seen.via == str(cfg.nodes["beta"].private.ip)


def test_the_peers_server_silent_on_the_private_network_is_read_on_the_public_one(
        monkeypatch: pytest.MonkeyPatch, cfg: config.Config) -> None:
    _networks_at_once(monkeypatch, private_answers=False)
    seen = obs.observe_peer(cfg, "beta")
    assert seen.role is PgRole.PRIMARY and seen.via == str(cfg.nodes["beta"].public.ip)


def test_the_peers_server_silent_on_both_networks_is_unreachable_with_both_reasons(
        monkeypatch: pytest.MonkeyPatch, cfg: config.Config) -> None:
    def connect_peer(cfg: config.Config, node: str, network: str = "private") -> _Conn:
        raise psycopg.OperationalError(f"{network} timeout expired\nsecond line")

    monkeypatch.setattr(obs, "connect_peer", connect_peer)
    seen = obs.observe_peer(cfg, "beta")
    assert seen.role is PgRole.UNREACHABLE
    assert seen.error == "private: private timeout expired; public: public timeout expired"
