"""`standby bootstrap` and the peer's release as recorded at the peer's own bootstrap.

The record is as old as the peer's last bootstrap: during a rolling upgrade (README "Upgrades") the
peer may run a release one apart, which the pair supports side by side. Bootstrap refused anything
but the same release, so re-running it on one node mid-upgrade was blocked by a stale record.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from standby import config
from standby.act import bootstrap
from standby.act.bootsteps import BootstrapBlocked
from standby.documents import NodeFacts
from tests.unit.configs import EXAMPLE


def _facts(node: str, release: str, major: int = 15) -> NodeFacts:
    return NodeFacts(node, release, major, f"{major}.8", 2, 1 << 30, node, datetime(2026, 12, 1, tzinfo=UTC))


@pytest.fixture
def cfg(monkeypatch: pytest.MonkeyPatch) -> config.Config:
    monkeypatch.setattr(bootstrap, "local_facts", lambda cfg, node: _facts(node, "1.4.2"))
    return config.load(EXAMPLE)


@pytest.mark.parametrize("theirs", ["1.4.0", "1.4.9", "1.3.7", "1.5.0"])
def test_bootstrap_accepts_a_peer_recorded_the_same_or_one_release_apart(cfg: config.Config, theirs: str) -> None:
    bootstrap._refuse_version_mismatch(cfg, "alpha", _facts("beta", theirs))


@pytest.mark.parametrize("theirs", ["1.2.0", "1.6.1", "2.4.2"])
def test_bootstrap_refuses_a_peer_more_than_one_release_apart_naming_the_record_and_the_fix(
        cfg: config.Config, theirs: str) -> None:
    with pytest.raises(BootstrapBlocked) as e:
        bootstrap._refuse_version_mismatch(cfg, "alpha", _facts("beta", theirs))
    said = str(e.value)
    assert theirs in said and "1.4.2" in said and "at its bootstrap" in said and "install" in said


def test_bootstrap_refuses_another_postgresql_major(cfg: config.Config) -> None:
    with pytest.raises(BootstrapBlocked, match="major"):
        bootstrap._refuse_version_mismatch(cfg, "alpha", _facts("beta", "1.4.2", major=16))
