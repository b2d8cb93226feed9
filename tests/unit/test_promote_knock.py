"""`standby promote`'s look at a pair node's PostgreSQL port: one TCP knock on both links before any
PostgreSQL question, shared by the pair's own promote (_look_at) and a follower's (_server_from_afar)."""

from __future__ import annotations

import contextlib
import http.server
import json
import time
from pathlib import Path

import pytest

from standby import apiclient, config
from standby import operations as ops
from standby.cli import promote
from standby.config import Config
from standby.documents import AGENT_VIEW
from standby.model import PgRole
from standby.observe import probes
from tests.unit.configs import example_with_secrets
from tests.unit.loopback import free_port, running
from tests.unit.test_documents import view


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


class _SlowAgent(http.server.BaseHTTPRequestHandler):
    """An agent's API that answers GET /status, but only after ``delay_s`` (a loaded host, a busy API)."""

    delay_s = 1.6
    body = b""

    def do_GET(self) -> None:
        time.sleep(self.delay_s)
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # a client that gave up meanwhile
            self.send_response(200)
            self.send_header("Content-Length", str(len(self.body)))
            self.end_headers()
            self.wfile.write(self.body)

    def log_message(self, *args: object) -> None:
        pass


def test_residual_a_slow_agent_is_not_taken_for_a_silent_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Known residual of the fence read (2026-12-05): `standby promote` gave the other agent one second; one
    that answered in 1.6 s was taken for silent, so its node was not fenced (PeerFirst.WARN) and could start
    its server again as primary beside the promoted one. An agent whose API port takes connections is waited
    for; only one that takes none, or does not answer in SLOW_AGENT_S, counts as silent."""
    port = free_port()
    raw, _ = example_with_secrets(tmp_path, port)
    raw["nodes"]["beta"]["private"]["address"] = "127.0.0.1/8"  # the client tries the private address first
    cfg = config.parse(raw)
    real_connect = probes.tcp_connect
    # beta's PostgreSQL port: nothing (its server stopped); its agent's port: the real knock.
    monkeypatch.setattr(promote.probes, "tcp_connect",
                        lambda address, p, timeout_s: p == port and real_connect(address, p, timeout_s))
    _SlowAgent.body = json.dumps(AGENT_VIEW.encode(view())).encode()
    with running(http.server.ThreadingHTTPServer(("127.0.0.1", port), _SlowAgent)):
        seen, agent = promote._look_at(cfg, "beta")
    assert agent == view(), "a slow agent was taken for a silent one"
    assert ops.peer_first(seen.role is PgRole.PRIMARY, agent is not None, force=False) is ops.PeerFirst.FENCE
    assert promote._agent_of(cfg, "beta") is None  # nothing listening at all: silent
