"""A node whose PostgreSQL leaves its agent's question unanswered (its processes stopped, its disk hung), as the
commands meet it: refused before their first step, and said by `standby status` (the r4 residual's commands; the
agent's own refusal is tests/unit/test_findings_fence_read.py::test_r4_*)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from standby import config
from standby import status as status_mod
from standby.act import switchover as switchover_mod
from standby.cli import promote
from standby.config import Config
from standby.documents import AgentView, PostgresView
from standby.model import DbState
from tests.unit.configs import example_with_secrets
from tests.unit.test_documents import view


@pytest.fixture
def cfg(tmp_path: Path) -> Config:
    raw, _ = example_with_secrets(tmp_path)
    return config.parse(raw)


def _agent(node: str, db: DbState, unanswered_s: float) -> AgentView:
    return replace(view(), node=node, peer="beta" if node == "alpha" else "alpha",
                   postgres=PostgresView(db, 1 << 33, db is DbState.STANDBY, True, "beta", unanswered_s=unanswered_s))


@pytest.mark.parametrize("silent_node", ["alpha", "beta"])
def test_r4_switchover_is_refused_before_any_step_when_either_server_does_not_answer(
        cfg: Config, monkeypatch: pytest.MonkeyPatch, silent_node: str) -> None:
    views = {"alpha": _agent("alpha", DbState.PRIMARY, 0.0), "beta": _agent("beta", DbState.STANDBY, 0.0)}
    monkeypatch.setattr(switchover_mod, "agent_status", lambda c, n, timeout_s: views[n])
    assert switchover_mod.roles(cfg)[:2] == ("alpha", "beta")  # both answering: the pair is healthy
    views[silent_node] = replace(views[silent_node], postgres=replace(views[silent_node].postgres, unanswered_s=7.5))
    with pytest.raises(switchover_mod.SwitchoverError, match=f"refused: {silent_node} has a PostgreSQL that has not "
                                                           "answered the agent.*nothing was changed"):
        switchover_mod.roles(cfg)


class _NoApi:
    """An agent API that must not be used: the command was to stop before it."""

    def __init__(self, _cfg: Config) -> None:
        pass

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"api.{name} called")


def test_r4_promote_is_refused_before_the_peer_is_fenced(cfg: Config, monkeypatch: pytest.MonkeyPatch) -> None:
    """Before, the peer was fenced first and the promotion refused (or left hanging) after: no primary at all."""
    monkeypatch.setattr(promote, "load", lambda _p: cfg)
    monkeypatch.setattr(promote, "agent_status", lambda c, n, timeout_s=2.0, via=None: _agent(n, DbState.STANDBY, 9.0)
                        if n == "beta" else _agent(n, DbState.PRIMARY, 0.0))
    monkeypatch.setattr(promote, "AgentApi", _NoApi)
    monkeypatch.setattr(promote, "replica_lag", lambda c, n: None)
    result = CliRunner().invoke(promote.command, ["--config", "x.toml", "--node", "beta", "--yes", "--force"])
    assert result.exit_code != 0 and "promotion refused: beta has a PostgreSQL that has not answered" in result.output, (
        result.output, result.exception)


def test_r4_status_says_a_server_that_does_not_answer_its_agent(cfg: Config) -> None:
    def said(unanswered_s: float) -> list[str]:
        agents = {"alpha": _agent("alpha", DbState.PRIMARY, unanswered_s), "beta": _agent("beta", DbState.STANDBY, 0.0)}
        warnings = status_mod._agent_warnings(cfg, status_mod.Observations("alpha", {}, (), agents=agents))
        return [w for w in warnings if "unanswered" in w]

    assert said(0.0) == [] and said(4.9) == []
    assert said(12.3) == ["alpha's PostgreSQL has left its agent's question unanswered for 12.3 s (its processes "
                          "stopped, its disk hung?): the agent keeps its last reading, and refuses operations but a "
                          "fence"]
