"""`standby bootstrap --node FOLLOWER`: whom it clones from and what it refuses, before anything is changed.

The clone itself runs in the lab (tests/lab/test_followers_lab.py); here the servers are what the observation
says they are, and the refusals must come before any step that changes the follower.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from standby import config
from standby.act import bootstrap_follower as bf
from standby.act.bootsteps import BootstrapBlocked
from standby.model import PgRole
from standby.observe.postgres import PgObservation
from tests.unit.test_followers_config import follower, with_followers


@pytest.fixture
def cfg(tmp_path: Path) -> config.Config:
    raw = with_followers(follower("gamma", 21))
    raw["followers"][0]["postgres"] = {"data_dir": str(tmp_path / "gamma")}
    return config.parse(raw)


def _seen(node: str, role: PgRole, major: int = 15) -> PgObservation:
    return PgObservation(node=node, role=role, observed_at=datetime.now(UTC), version=f"{major}.8",
                         version_num=major * 10000 + 8, error=None if role is not PgRole.UNREACHABLE else "refused")


def _world(monkeypatch: pytest.MonkeyPatch, pair: dict[str, PgRole], here: PgRole = PgRole.EMPTY,
           slot: bool = True, major: int = 15) -> list[str]:
    """The servers as observed; every step that would change something is recorded instead."""
    changed: list[str] = []
    monkeypatch.setattr(bf.obs, "observe_local", lambda cfg, node: _seen(node, here))
    monkeypatch.setattr(bf.obs, "observe_peer", lambda cfg, node, *a, **kw: _seen(node, pair[node], major))
    monkeypatch.setattr(bf.obs, "installed_major", lambda bin_dir: (15, "15.8"))
    monkeypatch.setattr(bf.act, "running_pid", lambda data_dir: None)

    class Conn:
        def __enter__(self) -> Conn:
            return self

        def __exit__(self, *a: object) -> None:
            pass

        def execute(self, q: str, params: Any = None) -> Any:
            return type("R", (), {"fetchone": staticmethod(lambda: (1,) if slot else None)})()

    monkeypatch.setattr(bf.obs, "connect_peer", lambda cfg, node, *a, **kw: Conn())
    for name in ("clone", "configure_as_standby", "start"):
        monkeypatch.setattr(bf.act, name, lambda *a, _n=name, **kw: changed.append(f"{_n} {a[2] if len(a) > 2 else ''}"))
    monkeypatch.setattr(bf, "_running", lambda cfg, node, note: changed.append("running"))
    return changed


def test_a_follower_is_cloned_from_the_pairs_one_primary(cfg: config.Config, monkeypatch: pytest.MonkeyPatch) -> None:
    changed = _world(monkeypatch, {"alpha": PgRole.STANDBY, "beta": PgRole.PRIMARY})
    bf.bootstrap_follower(cfg, "gamma", False, lambda step: None)
    assert changed == ["clone beta", "configure_as_standby beta", "start ", "running"]


@pytest.mark.parametrize("pair", [{"alpha": PgRole.PRIMARY, "beta": PgRole.PRIMARY},
                                  {"alpha": PgRole.UNREACHABLE, "beta": PgRole.STANDBY}])
def test_no_clone_unless_exactly_one_pair_server_accepts_writes(cfg: config.Config, monkeypatch: pytest.MonkeyPatch,
                                                                pair: dict[str, PgRole]) -> None:
    changed = _world(monkeypatch, pair)
    with pytest.raises(BootstrapBlocked, match="bootstrap the pair first") as e:
        bf.bootstrap_follower(cfg, "gamma", False, lambda step: None)
    assert "alpha: " in str(e.value) and "beta: " in str(e.value)
    assert changed == []


def test_no_clone_without_the_followers_slot_on_the_primary(cfg: config.Config, monkeypatch: pytest.MonkeyPatch) -> None:
    changed = _world(monkeypatch, {"alpha": PgRole.PRIMARY, "beta": PgRole.STANDBY}, slot=False)
    with pytest.raises(BootstrapBlocked, match=r"standby bootstrap --node alpha"):
        bf.bootstrap_follower(cfg, "gamma", False, lambda step: None)
    assert changed == []


def test_no_clone_of_another_major_version(cfg: config.Config, monkeypatch: pytest.MonkeyPatch) -> None:
    changed = _world(monkeypatch, {"alpha": PgRole.PRIMARY, "beta": PgRole.STANDBY}, major=16)
    with pytest.raises(BootstrapBlocked, match="major versions differ"):
        bf.bootstrap_follower(cfg, "gamma", False, lambda step: None)
    assert changed == []


def test_a_follower_that_accepts_writes_is_never_cloned_over(cfg: config.Config,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    changed = _world(monkeypatch, {"alpha": PgRole.UNREACHABLE, "beta": PgRole.UNREACHABLE}, here=PgRole.PRIMARY)
    with pytest.raises(BootstrapBlocked, match="switchback --node gamma"):
        bf.bootstrap_follower(cfg, "gamma", True, lambda step: None)
    assert changed == []


def test_a_stopped_follower_holding_data_is_kept_unless_replaced(cfg: config.Config, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "gamma").mkdir()
    (tmp_path / "gamma" / "PG_VERSION").write_text("15\n")
    changed = _world(monkeypatch, {"alpha": PgRole.PRIMARY, "beta": PgRole.STANDBY}, here=PgRole.STOPPED)
    with pytest.raises(BootstrapBlocked, match="--replace-data"):
        bf.bootstrap_follower(cfg, "gamma", False, lambda step: None)
    assert changed == [] and (tmp_path / "gamma" / "PG_VERSION").exists()
    said: list[str] = []
    bf.bootstrap_follower(cfg, "gamma", True, lambda step: said.append(f"{step.name}: {step.detail}"))
    assert changed[0] == "clone alpha"
    aside = list(tmp_path.glob("gamma.replaced-*"))
    assert len(aside) == 1 and (aside[0] / "PG_VERSION").read_text() == "15\n" and any("moved aside" in s for s in said)


def test_bootstrap_takes_a_followers_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from standby.cli import common

    raw = with_followers(follower("gamma", 21))
    monkeypatch.setattr(common, "load", lambda path: config.parse(raw))
    assert common.load_member(tmp_path / "standby.toml", "gamma")[1] == "gamma"
    assert common.load_member(tmp_path / "standby.toml", "alpha")[1] == "alpha"
    with pytest.raises(config.ConfigError, match="not in the configuration"):
        common.load_member(tmp_path / "standby.toml", "omega")
