"""Issue 12 in the lab's shape (pure: nothing built): gamma in another site behind a WAN router whose link
is shaped, delta a reporting follower on the pair's subnets, each follower with a data directory of its own,
and `standby dsn --for reporting` listing the reporting followers."""

from __future__ import annotations

import ipaddress
import tomllib
from pathlib import Path
from typing import Any

import pytest

from standby import config
from standby.cli.dsn import libpq_dsn
from standby.config import FollowerRole
from standby.lab import configfile, wan
from standby.lab.topology import (
    ALL_ROLES,
    PRIVATE_NET,
    PUBLIC_NET,
    WAN_ROUTER,
    WAN_ROUTER_FAR,
    LabSpec,
    Net,
)

EXAMPLE = Path(__file__).parents[2] / "etc" / "standby.example.toml"


def _in(address: str, net: str) -> bool:
    return ipaddress.ip_interface(address).ip in ipaddress.ip_network(net)


def _load(spec: LabSpec, tmp_path: Path) -> config.Config:
    path = tmp_path / "standby.toml"
    path.write_text(configfile.render(spec, [configfile.softswitch_service(spec)]))
    return config.load(path)


def test_i12_gamma_stands_in_a_subnet_of_its_own_behind_the_wan_router() -> None:
    spec = LabSpec("wn", followers=("gamma",))
    gamma = spec.node("gamma")
    assert not _in(gamma.public.address, PUBLIC_NET) and not _in(gamma.private.address, PRIVATE_NET)
    assert spec.gateway_for("gamma") == WAN_ROUTER_FAR[Net.PUBLIC]
    assert spec.roles() == (*ALL_ROLES, "gamma", WAN_ROUTER)
    # The pair itself is where it always was.
    assert [n.public.address for n in spec.nodes()] == [n.public.address for n in LabSpec("wn").nodes()]


def test_i12_the_router_shapes_both_directions_of_the_wan_link() -> None:
    spec = LabSpec("wn", followers=("gamma", "delta"), wan_rate_kbit=20_000)
    steps = wan.plan(spec)
    router = spec.netns(WAN_ROUTER)
    shaped = {s.argv[4] for s in steps if s.ns == router and s.argv[:2] == ("tc", "qdisc")}
    # Towards the pair on both of its networks, towards gamma on both of hers.
    assert shaped == {"near-pub", "near-priv", "gamma-pub", "gamma-priv"}
    assert all("20000kbit" in s.argv for s in steps if s.argv[:2] == ("tc", "qdisc"))
    # Both sides route to the other: gamma to the pair's private subnet over its private leg, the pair's
    # hosts (delta included) to gamma's subnets through the router.
    routes = {s.ns: [c for c in s.ip if c.startswith("route")] for s in steps if s.ip}
    assert any(PRIVATE_NET in r for r in routes[spec.netns("gamma")])
    for host in ("alpha", "beta", "delta"):
        assert len(routes[spec.netns(host)]) == 2, host


def test_i12_a_lab_without_a_follower_in_the_other_site_has_no_router() -> None:
    assert wan.plan(LabSpec("wn")) == [] and wan.plan(LabSpec("wn", followers=("delta",))) == []
    assert WAN_ROUTER not in LabSpec("wn", followers=("delta",)).roles()


@pytest.mark.parametrize(("text", "kbit"), [("100mbit", 100_000), ("1gbit", 1_000_000), ("512kbit", 512),
                                            ("2.5Mbit", 2_500)])
def test_i12_wan_rate_reads_tc_units(text: str, kbit: int) -> None:
    assert wan.parse_rate(text) == kbit


@pytest.mark.parametrize("text", ["100", "fast", "100mb", "-1mbit"])
def test_i12_wan_rate_refuses_other_forms(text: str) -> None:
    with pytest.raises(ValueError, match="kbit, mbit or gbit"):
        wan.parse_rate(text)


def test_i12_a_lab_spec_refuses_a_wan_rate_tbf_cannot_keep() -> None:
    with pytest.raises(ValueError, match="wan_rate_kbit"):
        LabSpec("wn", followers=("gamma",), wan_rate_kbit=1)


def test_i12_gamma_and_delta_each_run_a_server_of_their_own(tmp_path: Path) -> None:
    spec = LabSpec("wn", base=tmp_path, followers=("gamma", "delta"))
    cfg = _load(spec, tmp_path)
    delta = cfg.follower("delta")
    assert delta is not None and delta.role is FollowerRole.REPORTING
    for name in ("gamma", "delta", "alpha", "beta"):
        assert cfg.pg(name).data_dir == spec.node(name).pgdata, name
        assert cfg.pg(name).socket_dir == spec.node(name).socket_dir, name


def _example_with(*followers: dict[str, Any]) -> config.Config:
    d = tomllib.loads(EXAMPLE.read_text())
    d["followers"] = list(followers)
    return config.parse(d)


def _follower(name: str, n: int, role: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "role": role, "public": {"address": f"203.0.113.{n}/24", "interface": "eth0"},
            "private": {"address": f"10.9.0.{n}/24", "interface": "eth1"}, **extra}


def test_i12_dsn_for_reporting_lists_the_reporting_followers_first() -> None:
    cfg = _example_with(_follower("dr", 21, "warm"), _follower("reports", 31, "reporting"),
                        _follower("cdr", 32, "reporting",
                                  reporting_ip={"address": "203.0.113.120/24", "interface": "eth0"}))
    pair = [str(cfg.nodes[n].public.ip) for n in config.hosts_in_order(cfg, "reporting")]
    rep = libpq_dsn(cfg, "reporting", "cdr", None, 3)
    assert rep.startswith(f"host={','.join(['203.0.113.31', '203.0.113.120', *pair])} port=5432 ")
    own = libpq_dsn(cfg, "reporting", "cdr", None, 3, own="beta")
    assert own.startswith("host=" + ",".join([str(cfg.nodes["beta"].public.ip), "203.0.113.31", "203.0.113.120",
                                              str(cfg.nodes["alpha"].public.ip)]) + " ")
    # Writes never go to a follower; a warm follower serves no reports.
    assert "203.0.113." not in libpq_dsn(cfg, "writes", "cdr", None, 3)
    assert "203.0.113.21" not in rep


def test_i12_a_follower_postgres_override_is_read_and_checked() -> None:
    cfg = _example_with(_follower("dr", 21, "warm", postgres={"data_dir": "/srv/dr/pgdata"}))
    assert cfg.pg("dr").data_dir == Path("/srv/dr/pgdata") and cfg.pg("dr").port == cfg.postgres.port
    with pytest.raises(config.ConfigError, match=r"followers\[0\]\.postgres\.port: unknown key"):
        _example_with(_follower("dr", 21, "warm", postgres={"port": 5433}))


def test_i12_lab_up_refuses_a_wan_rate_it_cannot_read_before_building_anything(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from standby.cli.lab import up

    res = CliRunner().invoke(up, ["--name", "wnbad", "--follower", "gamma", "--wan-rate", "fast"])
    assert res.exit_code == 2 and "--wan-rate" in res.output and "e.g. 100mbit" in res.output, res.output
    assert not Path("/var/lib/standby-lab/wnbad").exists()
