"""`standby check` asks the tie-breaker exactly as the agent does (issue 14): a TCP connection to the
configured port, or one raw ICMP echo, with the agent's timeout; one TCP probe serves both."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from standby import apiclient, config, preflight
from standby.agent import probers
from standby.model import PgRole, Verdict
from standby.observe import network, probes
from standby.observe import postgres as obs
from tests.unit.configs import EXAMPLE


@pytest.fixture
def listener() -> Iterator[int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield int(s.getsockname()[1])


def with_tiebreaker(port: int, address: str = "127.0.0.1") -> config.Config:
    cfg = config.load(EXAMPLE)
    return cfg.model_copy(update={"tiebreaker": config.TieBreaker(address=address, port=port)})


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_check_and_agent_give_the_same_answer_over_tcp(listener: int) -> None:
    for cfg in (with_tiebreaker(listener), with_tiebreaker(closed_port())):
        tb = cfg.tiebreaker
        assert tb is not None
        agent_says = probers.probe_tiebreaker(cfg)
        assert probes.tiebreaker_answers(cfg) is agent_says
    assert probes.tiebreaker_answers(with_tiebreaker(listener)) is True


def test_an_echo_that_cannot_be_sent_is_not_a_silent_tiebreaker(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_raw_socket(*_: Any) -> bool:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(probes, "icmp_echo", no_raw_socket)
    with pytest.raises(probes.ProbeError, match="could not be sent"):
        probes.tiebreaker_answers(with_tiebreaker(0))


def _seen_world(monkeypatch: pytest.MonkeyPatch, echo: bool) -> list[tuple[str, float]]:
    """gather() with PostgreSQL and the system ping out of the picture; the echoes it sends."""
    now = datetime.now(UTC)
    monkeypatch.setattr(obs, "observe_local", lambda cfg, n: obs.PgObservation(n, PgRole.STOPPED, now))
    monkeypatch.setattr(obs, "observe_peer", lambda cfg, n: obs.PgObservation(n, PgRole.UNREACHABLE, now))
    monkeypatch.setattr(network, "ping", lambda *a, **k: not echo)  # a different answer: it must not be asked
    monkeypatch.setattr(preflight, "local_facts", lambda cfg, n: None)
    sent: list[tuple[str, float]] = []

    def icmp_echo(address: str, timeout_s: float, ident: int | None = None) -> bool:
        sent.append((address, timeout_s))
        return echo

    monkeypatch.setattr(probes, "icmp_echo", icmp_echo)
    return sent


@pytest.mark.parametrize("echo", [True, False])
def test_check_pings_the_tiebreaker_with_the_agents_echo(monkeypatch: pytest.MonkeyPatch, echo: bool) -> None:
    cfg = with_tiebreaker(0, "192.0.2.254")
    sent = _seen_world(monkeypatch, echo)
    seen = preflight.gather(cfg, "alpha")
    assert seen.reach["tiebreaker"] is echo
    assert sent and all(s == ("192.0.2.254", probes.tiebreaker_timeout_s(cfg)) for s in sent)
    (item,) = [i for i in preflight.evaluate(cfg, seen) if i.name == "tie-breaker"]
    assert item.verdict is (Verdict.PASS if echo else Verdict.FAIL) and "ICMP echo" in item.reason


def test_check_says_when_it_could_not_ask(monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = with_tiebreaker(0, "192.0.2.254")
    _seen_world(monkeypatch, True)

    def no_raw_socket(*_: Any) -> bool:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(probes, "icmp_echo", no_raw_socket)
    seen = preflight.gather(cfg, "alpha")
    (item,) = [i for i in preflight.evaluate(cfg, seen) if i.name == "tie-breaker"]
    assert seen.reach["tiebreaker"] is None and item.verdict is Verdict.WARN and "root" in item.reason


def test_one_tcp_probe() -> None:
    assert not hasattr(network, "tcp_open")  # probes.tcp_connect is the one the agent and the commands use


def test_check_asks_the_other_host_everything_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """A silent peer costs `standby check` one timeout, not one per question: the peer's server, the two
    pings, the tie-breaker and both agents are asked side by side (each fake waits for all the others;
    asked one after another, the first would wait in vain and the barrier break)."""
    cfg = with_tiebreaker(0)
    _seen_world(monkeypatch, True)
    barrier = threading.Barrier(6, timeout=10)
    now = datetime.now(UTC)

    def peer_pg(cfg: Any, n: str) -> obs.PgObservation:
        barrier.wait()
        return obs.PgObservation(n, PgRole.UNREACHABLE, now)

    def ping(*_: Any, **__: Any) -> bool:
        barrier.wait()
        return False

    def agent_status(cfg: Any, n: str, *_: Any, **__: Any) -> None:
        barrier.wait()

    monkeypatch.setattr(obs, "observe_peer", peer_pg)
    monkeypatch.setattr(network, "ping", ping)
    def tiebreaker_answers(*_: Any, **__: Any) -> bool:
        barrier.wait()
        return True

    monkeypatch.setattr(apiclient, "agent_status", agent_status)
    monkeypatch.setattr(probes, "tiebreaker_answers", tiebreaker_answers)
    seen = preflight.gather(cfg, "alpha")
    assert seen.reach["public"] is False and seen.reach["private"] is False and seen.reach["tiebreaker"] is True
    assert seen.agents == {"alpha": None, "beta": None}
