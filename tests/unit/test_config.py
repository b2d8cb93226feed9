"""The configuration is validated up front and every error names the key and the fix."""

from __future__ import annotations

import copy
import os
import tomllib
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from standby import config
from standby.cli.config_cmd import group as config_group

EXAMPLE = Path(__file__).parents[2] / "etc" / "standby.example.toml"


@pytest.fixture
def data() -> dict:
    d = tomllib.loads(EXAMPLE.read_text())
    d.pop("reporting", None)  # its own tests below (rdata): the others stay about what they name
    return d


@pytest.fixture
def rdata() -> dict:
    return tomllib.loads(EXAMPLE.read_text())


def problems(d: dict) -> list[str]:
    with pytest.raises(config.ConfigError) as e:
        config.parse(d, "test.toml")
    return e.value.problems


def test_example_is_valid() -> None:
    cfg = config.load(EXAMPLE)
    assert cfg.mode is config.Mode.HOT
    assert cfg.peer_of("alpha") == "beta"
    assert cfg.slot_name("beta") == "standby_beta"


def test_missing_key_named(data: dict) -> None:
    del data["cluster"]
    assert problems(data) == ["cluster: missing; this key is required"]


def test_wrong_type_named_with_value(data: dict) -> None:
    data["postgres"]["port"] = "fivefourthreetwo"
    (p,) = problems(data)
    assert p.startswith("postgres.port:") and "fivefourthreetwo" in p


def test_unknown_key_is_an_error(data: dict) -> None:
    data["replication"]["durabilty"] = "sync"
    (p,) = problems(data)
    assert p.startswith("replication.durabilty: unknown key")


def test_two_nodes_one_address(data: dict) -> None:
    data["nodes"]["beta"]["private"]["address"] = "198.51.100.11/24"
    (p,) = problems(data)
    assert "nodes.beta.private.address" in p and "nodes.alpha.private.address" in p


def test_service_ip_outside_subnet_in_hot_mode(data: dict) -> None:
    data["service_ips"][0]["address"] = "203.0.113.5/24"
    ps = problems(data)
    assert all(p.startswith("service_ips[0].address: 203.0.113.5/24 is outside") for p in ps)
    assert len(ps) == 2  # one per node


def test_warm_mode_nodes_in_two_subnets_without_service_ip(data: dict) -> None:
    data["mode"] = "warm"
    data["nodes"]["beta"]["public"]["address"] = "203.0.113.12/24"
    data["service_ips"] = []
    cfg = config.parse(data)
    assert cfg.mode is config.Mode.WARM


def test_warm_mode_rejects_floating_ip_across_subnets(data: dict) -> None:
    data["mode"] = "warm"
    data["nodes"]["beta"]["public"]["address"] = "203.0.113.12/24"
    (p,) = problems(data)
    assert p.startswith("service_ips[0].address") and "cannot float" in p


def test_fence_must_be_shorter_than_failover(data: dict) -> None:
    data["timings"]["fence_timeout_ms"] = 1500
    (p,) = problems(data)
    assert "fence_timeout_ms" in p and "shorter" in p


def test_service_command_must_be_argument_list(data: dict) -> None:
    data["services"][0]["start"] = "systemctl start kamailio"
    (p,) = problems(data)
    assert p.startswith("services[0].start:")


def test_exactly_two_nodes(data: dict) -> None:
    data["nodes"]["gamma"] = copy.deepcopy(data["nodes"]["beta"])
    (p,) = problems(data)
    assert p.startswith("nodes:") and "exactly two" in p


def test_preferred_primary_must_be_a_node(data: dict) -> None:
    data["preferred_primary"] = "gamma"
    (p,) = problems(data)
    assert p.startswith("preferred_primary:")


def test_node_name_resolution(data: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = config.parse(data)
    monkeypatch.delenv(config.NODE_ENV, raising=False)
    with pytest.raises(config.ConfigError, match="--node"):
        config.resolve_node(cfg, None)
    monkeypatch.setenv(config.NODE_ENV, "beta")
    assert config.resolve_node(cfg, None) == "beta"
    with pytest.raises(config.ConfigError, match="not in the configuration"):
        config.resolve_node(cfg, "gamma")


def test_secret_readable_by_others_is_refused(tmp_path: Path) -> None:
    f = tmp_path / "s"
    f.write_text("hunter2\n")
    f.chmod(0o644)
    with pytest.raises(config.ConfigError, match="chmod 600") as e:
        config.read_secret(f, "postgres.replication_password_file")
    assert "hunter2" not in str(e.value)
    f.chmod(0o600)
    assert config.read_secret(f, "x") == "hunter2"


def test_config_check_cli(tmp_path: Path, data: dict) -> None:
    runner = CliRunner()
    ok = runner.invoke(config_group, ["check", str(EXAMPLE)])
    assert ok.exit_code == 0 and "valid" in ok.output
    bad = tmp_path / "bad.toml"
    bad.write_text(EXAMPLE.read_text().replace('cluster = "softswitch"', 'cluster = ""'))
    res = runner.invoke(config_group, ["check", str(bad)])
    assert res.exit_code == 2 and "cluster:" in res.output
    before = sorted(os.listdir(tmp_path))
    runner.invoke(config_group, ["check", str(tmp_path / "missing.toml")])
    assert sorted(os.listdir(tmp_path)) == before  # validating touches nothing


def test_broken_toml_is_reported(tmp_path: Path) -> None:
    f = tmp_path / "x.toml"
    f.write_text("cluster = \n")
    with pytest.raises(config.ConfigError, match="not valid TOML"):
        config.load(f)


@settings(max_examples=200, deadline=None)
@given(st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=8),
                    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=8), c, max_size=4),
                    max_leaves=20))
def test_any_input_gives_valid_config_or_config_error(junk: object) -> None:
    """No input makes the loader crash with anything but a ConfigError."""
    base = tomllib.loads(EXAMPLE.read_text())
    for key in ("cluster", "nodes", "postgres", "timings", "service_ips"):
        d = copy.deepcopy(base)
        d[key] = junk
        try:
            config.parse(d)
        except config.ConfigError as e:
            assert e.problems


# -- [reporting] ------------------------------------------------------------------


def test_reporting_valid_and_optional(rdata: dict) -> None:
    assert config.parse(rdata).reporting is not None  # the example has one
    del rdata["reporting"]
    assert config.parse(rdata).reporting is None
    rdata["reporting"] = {"hot_standby_feedback": False}  # settings only, no floating address
    cfg = config.parse(rdata)
    assert cfg.reporting is not None and cfg.reporting.floating() is None


def test_reporting_address_must_be_its_own(rdata: dict) -> None:
    rdata["reporting"]["address"] = "192.0.2.100/24"
    (p,) = problems(rdata)
    assert p.startswith("reporting.address:") and "service_ips[0].address" in p
    rdata["reporting"]["address"] = "192.0.2.12/24"
    (p,) = problems(rdata)
    assert "nodes.beta.public.address" in p


def test_reporting_address_in_the_public_subnet(rdata: dict) -> None:
    rdata["reporting"]["address"] = "198.51.100.101/24"  # the private network
    (p,) = problems(rdata)
    assert p.startswith("reporting.address:") and "public subnet" in p


def test_reporting_address_and_interface_together(rdata: dict) -> None:
    del rdata["reporting"]["interface"]
    (p,) = problems(rdata)
    assert p.startswith("reporting:") and "give both or neither" in p


def test_reporting_fallback_and_bounds(rdata: dict) -> None:
    rdata["reporting"]["fallback"] = "elsewhere"
    (p,) = problems(rdata)
    assert p.startswith("reporting.fallback:") and "elsewhere" in p
    rdata["reporting"]["fallback"] = "primary"
    rdata["reporting"]["max_standby_streaming_delay_ms"] = -2
    (p,) = problems(rdata)
    assert p.startswith("reporting.max_standby_streaming_delay_ms:")


def test_reporting_settings_reach_postgres(rdata: dict) -> None:
    from standby.act.postgres import primary_settings, reporting_settings

    rdata["reporting"].update(hot_standby_feedback=False, max_standby_streaming_delay_ms=-1)
    cfg = config.parse(rdata)
    assert reporting_settings(cfg) == {"hot_standby_feedback": "off", "max_standby_streaming_delay": "-1"}
    assert primary_settings(cfg, "alpha", True)["hot_standby_feedback"] == "off"
    del rdata["reporting"]
    assert "hot_standby_feedback" not in primary_settings(config.parse(rdata), "alpha", True)


def test_dsn_for_reporting_and_writes(rdata: dict) -> None:
    from standby.cli.dsn import libpq_dsn

    cfg = config.parse(rdata)
    rep = libpq_dsn(cfg, "reporting", "cdr", None, 3, uri=False)
    assert rep == ("host=192.0.2.12,192.0.2.11 port=5432 dbname=cdr target_session_attrs=prefer-standby "
                   "connect_timeout=3")
    wr = libpq_dsn(cfg, "writes", "cdr", "app", 2, uri=True)
    assert wr == "postgresql://app@192.0.2.11:5432,192.0.2.12:5432/cdr?target_session_attrs=read-write&connect_timeout=2"
    assert "password" not in rep + wr


def test_digest_unchanged_without_reporting(rdata: dict) -> None:
    """A pair still running an older version (no [reporting] in its model) computes the same digest."""
    import hashlib
    import json

    from standby.agent.node import config_digest

    del rdata["reporting"]
    cfg = config.parse(rdata)
    older = {k: v for k, v in cfg.model_dump(mode="json").items() if k != "reporting"}
    assert config_digest(cfg) == hashlib.sha256(json.dumps(older, sort_keys=True).encode()).hexdigest()


def test_reporting_address_cannot_float_across_warm_subnets(rdata: dict) -> None:
    rdata["mode"] = "warm"
    rdata["nodes"]["beta"]["public"]["address"] = "203.0.113.12/24"
    rdata["service_ips"] = []
    (p,) = problems(rdata)
    assert p.startswith("reporting.address:") and "standby dsn --for reporting" in p
    del rdata["reporting"]["address"], rdata["reporting"]["interface"]
    assert config.parse(rdata).reporting is not None  # the settings alone are fine
