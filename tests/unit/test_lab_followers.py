"""Issue 12: the lab's follower `gamma` beside its pair, in the lab's shape and standby.toml (pure: nothing built)."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from standby import config
from standby.config import FollowerRole
from standby.lab import configfile
from standby.lab.topology import ALL_ROLES, WAN_ROUTER, LabSpec


def _load(spec: LabSpec, tmp_path: Path) -> tuple[dict[str, object], config.Config]:
    text = configfile.render(spec, [configfile.softswitch_service(spec)])
    path = tmp_path / "standby.toml"
    path.write_text(text)
    return tomllib.loads(text), config.load(path)


def test_i12_the_lab_config_names_gamma_a_warm_follower_with_its_own_server(tmp_path: Path) -> None:
    spec = LabSpec("fl", base=tmp_path, followers=("gamma",))
    raw, cfg = _load(spec, tmp_path)
    gamma = cfg.follower("gamma")
    assert gamma is not None and gamma.role is FollowerRole.WARM and gamma.upstream == "primary"
    assert str(gamma.private.ip) == spec.node("gamma").private.ip
    # gamma's own directories ([[followers]] postgres); the pair's nodes keep their own.
    assert cfg.pg("gamma").data_dir == spec.node("gamma").pgdata
    assert cfg.pg("gamma").socket_dir == spec.node("gamma").socket_dir
    for n in ("alpha", "beta"):
        assert cfg.pg(n).data_dir == spec.node(n).pgdata
    assert cfg.slot_name("gamma") == "standby_gamma"
    assert spec.roles() == (*ALL_ROLES, "gamma", WAN_ROUTER)  # gamma stands behind the WAN router
    assert [n.name for n in spec.nodes()] == ["alpha", "beta"]  # the pair alone, as every pair loop expects
    assert raw["followers"]


def test_i12_a_lab_without_followers_renders_the_two_node_file(tmp_path: Path) -> None:
    spec = LabSpec("fl", base=tmp_path)
    raw, cfg = _load(spec, tmp_path)
    assert "followers" not in raw and cfg.followers == []
    pg = raw["postgres"]
    assert isinstance(pg, dict) and "data_dir" not in pg and "socket_dir" not in pg
    assert spec.roles() == ALL_ROLES and spec.follower_nodes() == []


@pytest.mark.parametrize(("kw", "names"), [
    ({"followers": ("epsilon",)}, "gamma"),
    ({"followers": ("gamma", "gamma")}, "at most once"),
    ({"followers": ("gamma",), "pg_layout": "cluster"}, "pg_layout 'plain'"),
    ({"followers": ("gamma",), "follower_upstream": "beta"}, "primary, standby"),
])
def test_i12_a_lab_spec_refuses_followers_it_cannot_build(kw: dict[str, object], names: str) -> None:
    with pytest.raises(ValueError, match=names):
        LabSpec("fl", **kw)  # type: ignore[arg-type]


def test_cascaded_lab_followers_stream_from_the_hot_standby(tmp_path: Path) -> None:
    spec = LabSpec("fl", base=tmp_path, followers=("gamma", "delta"), follower_upstream="standby")
    raw, cfg = _load(spec, tmp_path)
    assert [f.upstream for f in cfg.followers] == ["standby", "standby"]
    assert [f["upstream"] for f in raw["followers"]] == ["standby", "standby"]  # type: ignore[index]
    assert spec.follower_source() == "beta"
    assert LabSpec("fl", base=tmp_path, followers=("gamma",)).follower_source() == "alpha"
