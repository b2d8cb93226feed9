"""`standby promote`'s look at a pair node's PostgreSQL port: one TCP knock on both links before any
PostgreSQL question, shared by the pair's own promote (_look_at) and a follower's (_server_from_afar)."""

from __future__ import annotations

from pathlib import Path

import pytest

from standby import config
from standby.cli import promote
from standby.config import Config
from standby.model import PgRole
from tests.unit.configs import example_with_secrets


@pytest.fixture
def cfg(tmp_path: Path) -> Config:
    raw, _ = example_with_secrets(tmp_path)
    return config.parse(raw)


def _links(cfg: Config, node: str) -> list[str]:
    return [str(cfg.nodes[node].private.ip), str(cfg.nodes[node].public.ip)]


def _knocks(monkeypatch: pytest.MonkeyPatch, answering: set[str]) -> list[tuple[str, int]]:
    knocked: list[tuple[str, int]] = []

    def tcp_connect(address: str, port: int, timeout_s: float) -> bool:
        knocked.append((address, port))
        return address in answering

    monkeypatch.setattr(promote.probes, "tcp_connect", tcp_connect)
    monkeypatch.setattr(promote, "agent_status", lambda *a: None)
    return knocked


def _never_asked(*_a: object) -> object:
    raise AssertionError("PostgreSQL asked although nothing answers on its port")


def test_nothing_answers_on_either_link_no_question_is_asked(cfg: Config, monkeypatch: pytest.MonkeyPatch) -> None:
    knocked = _knocks(monkeypatch, answering=set())
    monkeypatch.setattr(promote.obs, "observe_peer", _never_asked)
    monkeypatch.setattr(promote.followerobs, "accepts_writes", _never_asked)
    port = cfg.pg("beta").port
    said = f"nothing answers on port {port} at {', '.join(_links(cfg, 'beta'))}"
    assert promote._knock(cfg, "beta") == said
    assert sorted(knocked) == sorted((ip, port) for ip in _links(cfg, "beta"))
    seen, agent = promote._look_at(cfg, "beta")
    assert (seen.role, seen.error, agent) == (PgRole.UNREACHABLE, said, None)
    assert promote._server_from_afar(cfg, "beta") == (False, False, said)


def test_one_link_answering_is_enough_and_then_postgres_is_asked(cfg: Config, monkeypatch: pytest.MonkeyPatch) -> None:
    _knocks(monkeypatch, answering={_links(cfg, "alpha")[1]})  # only the public link
    asked: list[str] = []
    monkeypatch.setattr(promote.followerobs, "accepts_writes", lambda c, n: asked.append(n) or True)
    assert promote._knock(cfg, "alpha") is None
    assert promote._server_from_afar(cfg, "alpha") == (True, True, "primary")
    assert asked == ["alpha"]
